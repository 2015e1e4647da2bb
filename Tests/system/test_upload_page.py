"""The upload page at / in a real headless browser (Debian's chromium and chromium-driver,
driven by selenium): a real photo uploaded through the page, every variant loaded at the
manifest's size, a text file answered with the problem's sentences, the API key kept in the
tab, the Content-Security-Policy obeyed (no inline script), a narrow screen.

PRISM_TEST_UPDATE_SCREENSHOT=1 also writes the desktop screenshot to docs/upload-page.png.
"""
import json
import os
import shutil
from pathlib import Path

import pytest
import requests
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from conftest import REPO, photo

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
KEY = "page-test-key"


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,900", "--force-device-scale-factor=1", "--hide-scrollbars"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = ChromeService(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture
def stack(services):
    processors = [services.processor(), services.processor()]
    gateway = services.gateway(processors)
    gateway.wait_processors(2)
    return gateway


def wait(driver, timeout=60):
    """Polls every 0.1 s: a minute only matters when the machine stalls or the page is broken."""
    return WebDriverWait(driver, timeout, poll_frequency=0.1)


def recipes_loaded(driver):
    wait(driver).until(lambda d: d.execute_script(
        "return document.querySelectorAll('#recipe option').length > 0 && document.getElementById('recipe-description').textContent !== ''"))


def upload_through_page(driver, path):
    driver.find_element(By.ID, "file").send_keys(str(path))
    driver.find_element(By.ID, "submit").click()


def all_images_loaded(driver):
    return driver.execute_script("""
        const imgs = [...document.querySelectorAll('#variants img')];
        return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);""")


def full_page_screenshot(driver, path, width):
    driver.execute_script("window.scrollTo(0, 0)")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, max(600, height + 20))
    driver.save_screenshot(str(path))


def console_errors(driver):
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_a_photo_uploaded_through_the_page_shows_every_variant_at_its_size(stack, browser, tmp_path):
    gateway = stack
    browser.get(gateway.url + "/")
    assert browser.title.startswith("Prism")
    recipes_loaded(browser)
    options = [o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, "#recipe option")]
    assert options == [r["name"] for r in requests.get(gateway.url + "/v1/recipes", timeout=60).json()["recipes"]]
    assert browser.find_element(By.ID, "key-field").is_displayed() is False, "no key field when keys are off"

    # The progress bar shows while the body goes up and the variants are made.
    upload_through_page(browser, photo("Garden.jpg"))
    wait(browser).until(EC.visibility_of_element_located((By.ID, "result")))
    wait(browser).until(all_images_loaded)
    assert not browser.find_element(By.ID, "error").is_displayed()

    manifest = json.loads(browser.find_element(By.ID, "manifest").text)
    assert manifest["recipe"] == "default"
    assert requests.get(f"{gateway.url}/v1/images/{manifest['id']}", timeout=60).json() == manifest
    shown = browser.execute_script("""
        return [...document.querySelectorAll('#variants .variant')].map(v => {
            const img = v.querySelector('img');
            return {src: img.src, name: img.dataset.name, w: img.naturalWidth, h: img.naturalHeight,
                    caption: v.querySelector('.caption').textContent};
        });""")
    assert [s["name"] for s in shown] == [v["name"] for v in manifest["variants"]]
    for entry, item in zip(manifest["variants"], shown):
        assert item["src"] == entry["url"]
        assert (item["w"], item["h"]) == (entry["width"], entry["height"]), entry["name"]
        assert f"{entry['width']}×{entry['height']}" in item["caption"]
        assert entry["format"].upper() in item["caption"]
        assert entry["name"] in item["caption"]
    # Bytes: the caption's size and, on hover, the exact count.
    titles = browser.execute_script("return [...document.querySelectorAll('#variants .caption span')].map(s => s.title)")
    assert titles == [f"{v['bytes']:,} bytes" for v in manifest["variants"]]
    assert console_errors(browser) == [], "no script errors, no CSP violations"

    full_page_screenshot(browser, tmp_path / "upload-page.png", 1280)
    if os.environ.get("PRISM_TEST_UPDATE_SCREENSHOT"):
        shutil.copy(tmp_path / "upload-page.png", REPO / "docs" / "upload-page.png")

    # A text file: the problem's title and detail, as sentences.
    text = tmp_path / "notes.txt"
    text.write_text("these are notes, not an image\n" * 20)
    upload_through_page(browser, text)
    error = wait(browser).until(EC.visibility_of_element_located((By.ID, "error")))
    message = error.text
    problem = requests.post(gateway.url + "/v1/images", files={"file": ("notes.txt", text.read_bytes())}, timeout=30).json()
    assert problem["status"] == 415
    assert message.startswith(problem["title"].rstrip(".") + ". ")
    assert problem["detail"].rstrip(".") in message
    assert "HTTP 415" in message
    assert browser.execute_script("return document.getElementById('submit').disabled") is False
    full_page_screenshot(browser, tmp_path / "upload-page-error.png", 1280)


def test_the_page_asks_for_the_api_key_and_keeps_it_in_the_tab_only(services, browser, tmp_path):
    processors = [services.processor()]
    gateway = services.gateway(processors, "--api-keys", KEY)
    gateway.wait_processors(1)
    browser.get(gateway.url + "/")
    key_field = wait(browser).until(EC.visibility_of_element_located((By.ID, "key-field")))
    assert key_field.find_element(By.TAG_NAME, "label").text == "API key"

    # Uploading without the key: the 401 problem as a sentence.
    upload_through_page(browser, photo("LadyBird.jpg"))
    error = wait(browser).until(EC.visibility_of_element_located((By.ID, "error")))
    assert "Missing or wrong API key." in error.text and "Authorization: Bearer" in error.text

    field = browser.find_element(By.ID, "api-key")
    field.send_keys(KEY)
    browser.find_element(By.ID, "recipe").click()  # leaving the field commits it
    recipes_loaded(browser)
    assert browser.execute_script("return sessionStorage.getItem('prism.apiKey')") == KEY
    assert browser.execute_script("return localStorage.length") == 0
    assert browser.get_cookies() == []

    browser.find_element(By.ID, "submit").click()
    wait(browser).until(EC.visibility_of_element_located((By.ID, "result")))
    wait(browser).until(all_images_loaded)
    assert not browser.find_element(By.ID, "error").is_displayed()

    # A reload in the same tab keeps it; the field is filled in again.
    browser.refresh()
    recipes_loaded(browser)
    assert browser.find_element(By.ID, "api-key").get_attribute("value") == KEY


def test_the_page_works_on_a_narrow_screen(stack, browser, tmp_path):
    gateway = stack
    browser.set_window_size(360, 740)
    browser.get(gateway.url + "/")
    recipes_loaded(browser)
    upload_through_page(browser, photo("YellowFlower.jpg"))
    wait(browser).until(all_images_loaded)
    overflow = browser.execute_script("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than a 360px screen"
    full_page_screenshot(browser, tmp_path / "upload-page-narrow.png", 360)


def test_the_page_is_served_with_a_strict_policy_and_can_be_turned_off(services):
    processors = [services.processor()]
    gateway = services.gateway(processors)
    page = requests.get(gateway.url + "/", timeout=60)
    assert page.status_code == 200 and page.headers["Content-Type"] == "text/html; charset=utf-8"
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert f"img-src 'self' blob: http://127.0.0.1:{gateway.port}" in policy
    assert "<script>" not in page.text and "style=" not in page.text
    for asset, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
        served = requests.get(f"{gateway.url}/assets/{asset}", timeout=60)
        assert served.status_code == 200 and served.headers["Content-Type"].startswith(kind)
    assert requests.get(gateway.url + "/assets/nope.js", timeout=60).status_code == 404

    off = services.gateway(processors, "--upload-page=false")
    for path in ("/", "/assets/app.js"):
        answer = requests.get(off.url + path, timeout=60)
        assert answer.status_code == 404
        assert answer.headers["Content-Type"] == "application/problem+json"
    assert requests.get(off.url + "/openapi.json", timeout=60).status_code == 200

    by_env = services.gateway(processors, env={"PRISM_UPLOAD_PAGE": "false"})
    assert requests.get(by_env.url + "/", timeout=60).status_code == 404
