"""The page at / in a real browser: Debian's headless Chromium, driven by Selenium, against a real server.

Needs /usr/bin/chromium and /usr/bin/chromedriver (``.ci/install-chromium.sh`` installs them, as root);
skipped with that reason where they are missing (failed under ``CI=true``: CI must run it), failed where
they are present and the page is broken.
Screenshots go to ``$TEST_ARTIFACTS`` (default ``test-artifacts/`` in the repo root).

    sudo .ci/install-chromium.sh
    .venv/bin/python -m pytest tests/integration/test_page.py
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, make_image, require_or_skip

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
MISSING = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]

pytestmark = pytest.mark.integration
# Without the background-networking flags Chromium keeps dialling Google services, which a closed
# network refuses; --user-data-dir keeps each run's profile fresh and out of $HOME.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1100",
]
WAIT_S = 60  # an answer takes well under a second; the margin is for 2 busy CPU cores


def artifacts_dir() -> Path:
    path = Path(os.environ.get("TEST_ARTIFACTS") or REPO / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def chromium() -> None:
    """Checked before the other fixtures (session scope, and ``browser`` comes first in every test), so a
    host without Chromium does not export a model or start a server first."""
    require_or_skip(
        not MISSING,
        f"Chromium is not installed ({', '.join(MISSING)} missing): "
        "run .ci/install-chromium.sh as root to install Debian's chromium and chromium-driver",
    )


@pytest.fixture(scope="module")
def browser(chromium, tmp_path_factory):
    from selenium import webdriver  # a dev dependency: missing it is a broken setup, not a skip
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    log = artifacts_dir() / "chromedriver.log"
    # An explicit driver path: Selenium Manager never runs, so nothing is downloaded.
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER), log_output=str(log)), options=options)
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


def screenshot(driver, name: str) -> Path:
    path = artifacts_dir() / name
    driver.save_screenshot(str(path))
    return path


def wait_for(driver, condition, what: str, shot: str):
    """Wait until ``condition(driver)`` is truthy; on timeout save a screenshot and say what was on screen."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(condition)
    except TimeoutException:
        path = screenshot(driver, shot)
        state = driver.execute_script("return document.body.dataset.state")
        status = driver.execute_script("return document.getElementById('status').textContent")
        pytest.fail(
            f"timed out after {WAIT_S} s waiting for {what}; page state {state!r}, status {status!r}; screenshot {path}"
        )


def open_page(driver, url: str) -> None:
    driver.get(url + "/")
    wait_for(
        driver, lambda d: field(d, "#model", "arch") not in (None, "-"), "the model metadata", "page-load-timeout.png"
    )


def field(driver, container: str, name: str) -> str | None:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, f'{container} [data-field="{name}"]')
    return found[0].text if found else None


def finished(filename: str):
    """Condition: the page has answered for ``filename`` (results or an error)."""

    def check(driver):
        state, shown = driver.execute_script(
            "return [document.body.dataset.state, document.getElementById('predictions').dataset.filename]"
        )
        return state == "error" or (state == "done" and shown == filename)

    return check


def shown_predictions(driver) -> list[tuple[str, int]]:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, "#predictions tbody tr.prediction")
    return [(row.find_element(By.CSS_SELECTOR, ".label").text, int(row.get_attribute("data-index"))) for row in rows]


def api_answer(url: str, filename: str, data: bytes, content_type: str) -> httpx.Response:
    return httpx.post(url + "/classify", files={"file": (filename, data, content_type)}, timeout=WAIT_S)


def test_upload_shows_the_same_top5_as_the_api(browser, onnx_server, tmp_path):
    from selenium.webdriver.common.by import By

    image = tmp_path / "gradient.jpg"
    image.write_bytes(make_image(640, 480, seed=3))
    open_page(browser, onnx_server.url)
    browser.get_log("browser")  # start the console record here

    browser.find_element(By.ID, "file-input").send_keys(str(image))
    wait_for(browser, finished("gradient.jpg"), "five result rows", "page-top5-timeout.png")
    screenshot(browser, "page-top5.png")

    assert browser.execute_script("return document.body.dataset.state") == "done", browser.find_element(
        By.ID, "error"
    ).text
    api = api_answer(onnx_server.url, "gradient.jpg", image.read_bytes(), "image/jpeg").json()
    expected = [(p["label"], p["index"]) for p in api["results"][0]["predictions"]]
    assert len(expected) == 5
    assert shown_predictions(browser) == expected
    assert browser.find_element(By.ID, "preview").is_displayed()
    for timing in ("preprocess", "queue", "inference", "total"):
        assert field(browser, "#timings", timing).endswith(" ms")
    assert field(browser, "#timings", "batch_size") == str(api["results"][0]["timings_ms"]["batch_size"])

    model = httpx.get(onnx_server.url + "/v1/models").json()["models"][0]
    assert field(browser, "#model", "arch") == model["arch"]
    assert field(browser, "#model", "weights") == model["weights"] == "untrained"
    assert field(browser, "#model", "backend") == f"{model['backend']['name']} on {model['backend']['device']}"
    assert field(browser, "#model", "precision") == model["backend"]["precision"]
    banner = browser.find_element(By.ID, "untrained-banner")
    assert banner.is_displayed() and "Untrained model" in banner.text

    errors = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, f"the page logged errors: {errors}"


def test_dropped_image_is_classified(browser, onnx_server):
    data = make_image(300, 400, seed=7, fmt="PNG")
    open_page(browser, onnx_server.url)
    # What a drag from the desktop delivers: a drop event whose dataTransfer holds the file.
    browser.execute_script(
        """
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], arguments[1], {type: "image/png"}));
        document.getElementById("drop-zone").dispatchEvent(
            new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
    """,
        base64.b64encode(data).decode(),
        "dropped.png",
    )
    wait_for(browser, finished("dropped.png"), "the dropped image's results", "page-drop-timeout.png")

    api = api_answer(onnx_server.url, "dropped.png", data, "image/png").json()
    assert shown_predictions(browser) == [(p["label"], p["index"]) for p in api["results"][0]["predictions"]]


def test_non_image_shows_the_error(browser, onnx_server, tmp_path):
    from selenium.webdriver.common.by import By

    notes = tmp_path / "notes.txt"
    notes.write_text("this is not an image\n")
    open_page(browser, onnx_server.url)

    browser.find_element(By.ID, "file-input").send_keys(str(notes))
    wait_for(browser, finished("notes.txt"), "an error message", "page-error-timeout.png")
    screenshot(browser, "page-error.png")

    api = api_answer(onnx_server.url, "notes.txt", notes.read_bytes(), "text/plain")
    assert 400 <= api.status_code < 500
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed()
    assert api.json()["error"] in error.text and "notes.txt" in error.text
    assert f"HTTP {api.status_code}" in error.text
    assert shown_predictions(browser) == []
