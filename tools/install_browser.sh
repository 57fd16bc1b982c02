#!/bin/sh
# Debian's headless Chromium and its WebDriver, for the web app's browser test
# (tests/integration/test_web_browser.py). Installed from Debian's packages, never downloaded by
# a test tool. Without root (or sudo) it only says what to install: the browser test then skips,
# except under CI, where it fails.
set -e
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser: no apt-get here; install Chromium and chromedriver to run the browser test" >&2
    exit 0
fi
if [ "$(id -u)" = 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "install_browser: run 'apt-get install chromium chromium-driver' as root to run the browser test" >&2
    exit 0
fi
echo "install_browser: installing Debian's chromium and chromium-driver" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
