"""The playground page in a real headless Chromium (Debian's chromium + chromium-driver, via Selenium)."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("selenium.webdriver", reason="selenium is not installed (bash scripts/setup.sh --dev)")

from serve_helpers import CHROMIUM, DRIVER, chromium, fit_assets, post, serving  # noqa: E402

from sparekit.models.tiny import tiny_model  # noqa: E402
from sparekit.serve import build_engine  # noqa: E402


def words(text: str) -> list[str]:
    """What a browser shows of a random model's text (control characters render as spaces)."""
    return "".join(c if c.isprintable() else " " for c in text).split()


@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="chromium/chromedriver missing: bash scripts/setup.sh --dev "
                                                      "installs them with apt-get")
def test_playground_shows_gauge_and_both_answers(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    lm = tiny_model("llama")
    probes, fitted = fit_assets(lm, tmp_path)
    context, question = "The capital of France is Porto-Novo.", "What is the capital of France?"
    with serving(build_engine(lm, probes, [fitted])) as (_, url):
        expected_plain = post(url + "/v1/answer", {"context": context, "question": question})[1]
        expected_steered = post(url + "/v1/answer", {"context": context, "question": question, "detect": False,
                                                     "steer": {"method": "actadd", "toward": "context"}})[1]
        browser = chromium()
        try:
            browser.get(url + "/")
            wait = WebDriverWait(browser, 60)
            wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#method option"))
            for field, text in (("context", context), ("question", question)):
                element = browser.find_element(By.ID, field)
                element.clear()
                element.send_keys(text)
            browser.find_element(By.CSS_SELECTOR, "label[for=toward-context]").click()
            browser.find_element(By.ID, "ask").click()
            wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error"))
            assert browser.find_element(By.ID, "error").text == ""
            gauge = browser.find_element(By.ID, "gauge-value").text
            assert float(gauge) == pytest.approx(expected_plain["sparekit"]["conflict_probability"], abs=0.006)
            assert browser.find_element(By.ID, "source").text == expected_plain["sparekit"]["predicted_source"]
            for element, reply in (("answer-plain", expected_plain), ("answer-steered", expected_steered)):
                assert words(browser.find_element(By.ID, element).text) == words(reply["answer"] or "(empty)")
            assert browser.find_element(By.ID, "steered-title").text.lower() == "steered toward context"
            assert "actadd, strength 4" in browser.find_element(By.ID, "meta-steered").text
        finally:
            browser.quit()
