"""The web page end to end in a real headless Chromium (Debian's ``chromium`` and
``chromium-driver``, installed by ``make``): choose a photo, untick a face, protect, download,
recover with a wrong then the right password, download, and compare pixels.

Without the browser the test is skipped on a developer's machine and fails under CI (``CI`` set),
where ``make test`` must have installed it.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import GROUP_JPG, TWO_FACE_REGION

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
PASSWORD = "browser test: four random words"


def _need_browser():
    if CHROMIUM and CHROMEDRIVER:
        return
    msg = "Debian's chromium and chromium-driver are not installed (make test installs them)"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="module")
def server_url():
    from faceveil.web import ServeConfig, background_server

    with background_server(ServeConfig()) as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path_factory.mktemp("downloads")
    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1600", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {
        "download.default_directory": str(downloads), "download.prompt_for_download": False,
        "safebrowsing.enabled": False})
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    yield driver
    driver.quit()


def _wait(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _downloaded(folder: Path, name: str) -> Path:
    def done():
        p = folder / name
        return p if p.exists() and not list(folder.glob("*.crdownload")) and p.stat().st_size > 0 else None

    return _wait(done, what=f"the download {name}")


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_protect_download_recover_in_chromium(browser, server_url, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    with Image.open(GROUP_JPG) as im:
        original = np.asarray(im.convert("RGB").crop(TWO_FACE_REGION))
    src = tmp_path / "two.png"
    Image.fromarray(original).save(src)

    d = browser
    d.get(server_url + "/")
    _wait(lambda: len(Select(d.find_element(By.ID, "veil")).options) >= 3, what="the veil list")
    assert d.find_element(By.ID, "protect-btn").get_attribute("disabled")

    d.find_element(By.ID, "protect-file").send_keys(str(src))
    toggles = _wait(lambda: d.find_elements(By.CSS_SELECTOR, ".face-toggle"), what="the detected faces")
    assert len(toggles) == 2
    assert "2 faces found" in d.find_element(By.ID, "protect-status").text
    toggles[0].click()  # leave face 1 visible
    assert not toggles[0].is_selected() and toggles[1].is_selected()

    Select(d.find_element(By.ID, "veil")).select_by_value("pixelate")
    d.find_element(By.ID, "password").send_keys(PASSWORD)
    d.find_element(By.ID, "password2").send_keys(PASSWORD + "?")
    assert "do not match" in d.find_element(By.ID, "pw-hint").text
    assert d.find_element(By.ID, "protect-btn").get_attribute("disabled")
    d.find_element(By.ID, "password2").clear()
    d.find_element(By.ID, "password2").send_keys(PASSWORD)
    _wait(lambda: not d.find_element(By.ID, "protect-btn").get_attribute("disabled"), what="Protect enabled")
    d.find_element(By.ID, "protect-btn").click()
    link = d.find_element(By.ID, "download-protected")
    _wait(link.is_displayed, what="the protected download link")
    assert "Veiled 1 face" in d.find_element(By.ID, "protect-status").text
    link.click()
    veiled = _pixels(_downloaded(d.downloads, "two.veiled.png"))

    boxes = d.execute_script("return state.faces.map(f => f.box)")
    kept = [int(round(v)) for v in boxes[0]]
    veiled_box = [int(round(v)) for v in boxes[1]]
    x0, y0, x1, y1 = kept
    assert np.array_equal(veiled[y0:y1, x0:x1], original[y0:y1, x0:x1]), "the unticked face was changed"
    x0, y0, x1, y1 = veiled_box
    assert not np.array_equal(veiled[y0:y1, x0:x1], original[y0:y1, x0:x1]), "the ticked face was not veiled"

    d.find_element(By.ID, "tab-recover").click()
    _wait(d.find_element(By.ID, "recover-file").is_displayed, what="the recover tab")
    d.find_element(By.ID, "recover-file").send_keys(str(d.downloads / "two.veiled.png"))
    d.find_element(By.ID, "recover-password").send_keys("not the password")
    d.find_element(By.ID, "recover-btn").click()
    _wait(lambda: "Wrong password" in d.find_element(By.ID, "recover-status").text, what="the wrong-password message")
    assert not d.find_element(By.ID, "download-recovered").is_displayed()

    d.find_element(By.ID, "recover-password").clear()
    d.find_element(By.ID, "recover-password").send_keys(PASSWORD)
    d.find_element(By.ID, "recover-btn").click()
    link = d.find_element(By.ID, "download-recovered")
    _wait(link.is_displayed, what="the recovered download link")
    assert "Recovered 1 face" in d.find_element(By.ID, "recover-status").text
    link.click()
    back = _pixels(_downloaded(d.downloads, "two.recovered.png"))
    assert back.shape == original.shape
    mse = np.mean((back.astype(float) - original.astype(float)) ** 2)
    assert 10 * np.log10(255 ** 2 / mse) > 32
    x0, y0, x1, y1 = kept
    assert np.array_equal(back[y0:y1, x0:x1], original[y0:y1, x0:x1])
