"""The playground page in a real headless Chromium (Debian's chromium + chromium-driver, via Selenium)."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("selenium.webdriver", reason="selenium is not installed (bash scripts/setup.sh --dev)")

from serve_helpers import CHROMIUM, DRIVER, chromium, fit_assets, post, serving  # noqa: E402

from sparekit.data.formats import FORMATS  # noqa: E402
from sparekit.models.tiny import tiny_model  # noqa: E402
from sparekit.serve import build_engine  # noqa: E402


def words(text: str) -> list[str]:
    """What a browser shows of a random model's text (control characters render as spaces)."""
    return "".join(c if c.isprintable() else " " for c in text).split()


@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="chromium/chromedriver missing: bash scripts/setup.sh --dev "
                                                      "installs them with apt-get")
def test_playground_shows_gauge_and_both_answers(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

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
            closed = expected_plain["sparekit"]["closed_book_answer"]  # the default reading is recall's
            assert browser.find_element(By.ID, "source-p").text == f'recall: closed-book "{closed}"'.strip()
            for element, reply in (("answer-plain", expected_plain), ("answer-steered", expected_steered)):
                assert words(browser.find_element(By.ID, element).text) == words(reply["answer"] or "(empty)")
            assert browser.find_element(By.ID, "steered-title").text.lower() == "steered toward context"
            assert "actadd, strength 4" in browser.find_element(By.ID, "meta-steered").text
            # behind the recall gate: what /v1/answer says of the same request
            gated = post(url + "/v1/answer", {"context": "a b c", "question": question, "detect": False,
                                              "steer": {"method": "actadd", "toward": "context", "gate": "recall"}})[1]
            element = browser.find_element(By.ID, "context")
            element.clear()
            element.send_keys("a b c")
            Select(browser.find_element(By.ID, "gate")).select_by_value("recall")
            browser.find_element(By.ID, "ask").click()
            wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error"))
            assert browser.find_element(By.ID, "error").text == ""
            assert words(browser.find_element(By.ID, "answer-steered").text) == words(gated["answer"] or "(empty)")
            meta = browser.find_element(By.ID, "meta-steered").text
            assert ("strength 4" in meta) == gated["sparekit"]["steered"] and ("left unsteered" in meta) != \
                gated["sparekit"]["steered"]
        finally:
            browser.quit()


@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="chromium/chromedriver missing: bash scripts/setup.sh --dev "
                                                      "installs them with apt-get")
def test_playground_offers_the_prompt_formats_and_sends_the_chosen_one(tmp_path):
    """Every registered format is offered, chat disabled with its reason on a model without a chat template,
    and both requests of a question carry the chosen ``prompt_format`` (the gauge reads that prompt)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    lm = tiny_model("llama")
    probes, fitted = fit_assets(lm, tmp_path)
    question = "What is the capital of France?"
    with serving(build_engine(lm, probes, [fitted])) as (_, url):
        expected = post(url + "/v1/answer", {"context": "The capital of France is Porto-Novo.", "question": question,
                                             "prompt_format": "rag"})[1]
        browser = chromium()
        try:
            browser.get(url + "/")
            wait = WebDriverWait(browser, 60)
            wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#prompt-format option"))
            options = browser.find_elements(By.CSS_SELECTOR, "#prompt-format option")
            assert [o.get_attribute("value") for o in options] == list(FORMATS)
            assert [o.get_attribute("value") for o in options if not o.is_enabled()] == ["chat"]
            assert "chat template" in browser.find_element(By.ID, "format-note").text
            browser.execute_script("""window.sent = []; const send = window.fetch;
                window.fetch = (url, init) => { if (init && init.body) window.sent.push(JSON.parse(init.body));
                                                return send(url, init); };""")
            Select(browser.find_element(By.ID, "prompt-format")).select_by_value("rag")
            browser.find_element(By.ID, "ask").click()
            wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error"))
            assert browser.find_element(By.ID, "error").text == ""
            sent = browser.execute_script("return window.sent;")
            assert len(sent) == 2 and {body["prompt_format"] for body in sent} == {"rag"}
            gauge = float(browser.find_element(By.ID, "gauge-value").text)
            assert gauge == pytest.approx(expected["sparekit"]["conflict_probability"], abs=0.006)
        finally:
            browser.quit()
