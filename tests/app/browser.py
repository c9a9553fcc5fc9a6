"""Driving a served page in Debian's headless Chromium (Selenium, nothing downloaded): the server as a user
starts it, the driver, and small waits. Shared by the web editor's and the rating page's browser tests; the
``driver`` and ``downloads`` fixtures are in this folder's conftest.py."""
from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
import time

import pytest

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
browser = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                             reason="needs Debian's chromium and chromium-driver (.ci/run installs them: "
                                    "apt-get install chromium chromium-driver)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(cmd: list, announce: str, cwd=None, timeout: float = 180):
    """Start ``cmd`` and yield its URL once it prints ``<announce> open URL``; stopped as ``kill`` stops it."""
    proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines, url = [], []

    def read():
        for line in proc.stdout:
            lines.append(line)
            m = re.match(re.escape(announce) + r" open (http://\S+)", line)
            if m:
                url.append(m.group(1))
    threading.Thread(target=read, daemon=True).start()
    t0 = time.monotonic()
    while not url and proc.poll() is None and time.monotonic() - t0 < timeout:
        time.sleep(0.2)
    if not url:
        proc.kill()
        pytest.fail(f"{cmd[0]} did not come up:\n" + "".join(lines)[-3000:])
    try:
        yield url[0]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def chrome(downloads):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    o = webdriver.ChromeOptions()
    o.binary_location = CHROMIUM
    o.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                        "download.prompt_for_download": False})
    # as root in a closed network: no sandbox, no background connections (they would be refused)
    for f in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
              "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--window-size=1400,1100"):
        o.add_argument(f)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=o)   # Debian's driver: nothing downloaded


def wait(cond, timeout=120, every=0.05, what="condition"):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = cond()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def css(d, sel):
    from selenium.webdriver.common.by import By
    return d.find_elements(By.CSS_SELECTOR, sel)


def text(d, sel) -> str:
    from selenium.common.exceptions import StaleElementReferenceException
    try:
        return " ".join(e.text for e in css(d, sel))
    except StaleElementReferenceException:                  # re-rendered under us: read again next poll
        return ""
