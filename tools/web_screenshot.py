"""The README's screenshot of the web page: a background `faceveil serve`, Debian's headless
Chromium, the sample photo protected with the pixelate veil, one face left visible.

    python tools/web_screenshot.py [--photo examples/group.jpg] [-o docs/web.png]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from faceveil.web import ServeConfig, background_server  # noqa: E402


def wait(predicate, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise SystemExit("timed out waiting for the page")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photo", type=Path, default=ROOT / "examples" / "group.jpg")
    ap.add_argument("-o", "--output", type=Path, default=ROOT / "docs" / "web.png")
    args = ap.parse_args(argv)
    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_bin):
        print("web_screenshot: needs Debian's chromium and chromium-driver (sh tools/install_browser.sh)",
              file=sys.stderr)
        return 1
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    opts = Options()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1200,1000", "--hide-scrollbars"):
        opts.add_argument(a)
    with background_server(ServeConfig()) as url:
        d = webdriver.Chrome(options=opts, service=Service(executable_path=driver_bin))
        try:
            d.get(url + "/")
            wait(lambda: len(Select(d.find_element(By.ID, "veil")).options) >= 3)
            d.find_element(By.ID, "protect-file").send_keys(str(args.photo.resolve()))
            toggles = wait(lambda: d.find_elements(By.CSS_SELECTOR, ".face-toggle"))
            toggles[-1].click()
            Select(d.find_element(By.ID, "veil")).select_by_value("pixelate")
            for field in ("password", "password2"):
                d.find_element(By.ID, field).send_keys("four random words: ferry lemon quartz")
            d.find_element(By.ID, "protect-btn").click()
            wait(d.find_element(By.ID, "download-protected").is_displayed)
            time.sleep(0.5)
            height = d.execute_script("return document.body.scrollHeight")
            d.set_window_size(1200, min(int(height) + 40, 2400))
            args.output.parent.mkdir(parents=True, exist_ok=True)
            d.save_screenshot(str(args.output))
        finally:
            d.quit()
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
