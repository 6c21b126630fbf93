"""Screenshot of the playground on the default model (docs/serve_playground.png).

    python scripts/playground_screenshot.py [--out docs/serve_playground.png] [--toward memory]

Needs the dev extra and Debian's chromium + chromium-driver (``bash scripts/setup.sh --dev``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "serve_playground.png")
    parser.add_argument("--toward", choices=["memory", "context"], default="memory")
    args = parser.parse_args()
    import torch
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from serve_helpers import chromium

    from sparekit.models import load_model
    from sparekit.serve import build_engine, serve_in_thread

    torch.set_num_threads(1)
    with serve_in_thread(build_engine(load_model("default", device="cpu"))) as (_, url):
        browser = chromium(1100, 1000)
        try:
            browser.get(url + "/")
            wait = WebDriverWait(browser, 300)
            wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#method option"))
            browser.find_element(By.CSS_SELECTOR, f"label[for=toward-{args.toward}]").click()
            browser.find_element(By.ID, "ask").click()
            wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error"))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(str(args.out))
        finally:
            browser.quit()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
