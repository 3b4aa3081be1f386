"""The page with ALEXNET_API_KEY set: on a 401 it says so and asks for the key, keeps it in the tab's
sessionStorage (never in a URL), sends it as ``Authorization: Bearer`` and classifies. Headless
Chromium through Selenium, as tests/integration/test_page.py (whose browser and helpers it uses)."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import make_image
from tests.integration import test_page as page
from tests.integration.conftest import API_KEY as KEY

pytestmark = pytest.mark.integration
# test_page.py's fixtures: ``chromium`` skips (fails under CI=true) where it is not installed, before
# the model export and the server start; ``browser`` is a module's headless Chromium.
chromium = page.chromium
browser = page.browser
STORAGE = "alexnet-serve.api-key"


def stored_key(driver) -> str | None:
    return driver.execute_script("return sessionStorage.getItem(arguments[0])", STORAGE)


def key_form_shown(driver) -> bool:
    return driver.execute_script("return !document.getElementById('key-form').hidden")


def enter_key(driver, key: str) -> None:
    from selenium.webdriver.common.by import By

    field = driver.find_element(By.ID, "key-input")
    field.clear()
    field.send_keys(key)
    driver.find_element(By.ID, "key-submit").click()


def urls_requested(driver) -> list[str]:
    return driver.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")


def test_a_401_asks_for_the_key_which_then_classifies_and_stays_out_of_urls(browser, keyed_server, tmp_path):
    from selenium.webdriver.common.by import By

    url = keyed_server.url
    # The page's own files load without the key (they hold no data); its API calls need it.
    assert [httpx.get(url + path).status_code for path in ("/", "/static/app.js", "/v1/models")] == [200, 200, 401]
    image = tmp_path / "keyed.jpg"
    image.write_bytes(make_image(320, 240, seed=11))
    browser.get(url + "/")
    browser.execute_script("sessionStorage.clear()")
    browser.get(url + "/")

    # /v1/models answers 401: the model panel says why and the key form appears.
    page.wait_for(browser, key_form_shown, "the key form after /v1/models' 401", "page-key-form-timeout.png")
    assert "API key" in page.field(browser, "#model", "ready")

    # A classification without a key: the API's own 401 message, and the image waits for a key.
    browser.find_element(By.ID, "file-input").send_keys(str(image))
    page.wait_for(browser, page.finished("keyed.jpg"), "the 401 message", "page-key-401-timeout.png")
    error = browser.find_element(By.ID, "error").text
    assert "HTTP 401" in error and "unauthorized" in error and "API key" in error, error
    assert page.shown_predictions(browser) == []

    # A wrong key: asked again, and not kept.
    enter_key(browser, "wrong")
    page.wait_for(
        browser,
        lambda d: key_form_shown(d) and d.execute_script("return document.body.dataset.state") == "error",
        "the wrong key to be refused",
        "page-key-wrong-timeout.png",
    )
    assert stored_key(browser) is None

    # The right key: the waiting image is classified with it, the same answer as the API's.
    enter_key(browser, KEY)
    page.wait_for(
        browser,
        lambda d: d.execute_script("return document.body.dataset.state") == "done",
        "the classification with the key",
        "page-key-done-timeout.png",
    )
    page.screenshot(browser, "page-key-top5.png")
    api = httpx.post(
        url + "/classify",
        files={"file": ("keyed.jpg", image.read_bytes(), "image/jpeg")},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=page.WAIT_S,
    ).json()
    assert page.shown_predictions(browser) == [(p["label"], p["index"]) for p in api["results"][0]["predictions"]]
    page.wait_for(
        browser, lambda d: page.field(d, "#model", "arch") not in (None, "-"), "the model", "page-key-model-timeout.png"
    )
    assert not key_form_shown(browser)
    assert stored_key(browser) == KEY

    # Never in a URL: not the page's, not any request's; a reload in the same tab uses the kept key.
    assert KEY not in browser.current_url
    assert not [u for u in urls_requested(browser) if KEY in u or "wrong" in u]
    browser.refresh()
    page.open_page(browser, url)
    assert not key_form_shown(browser) and stored_key(browser) == KEY

    errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE" and "401" not in e["message"]]
    assert not errors, f"the page logged errors: {errors}"
