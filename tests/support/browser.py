"""A real browser: where Chromium and its driver are, the flags it runs with, how long a test waits for a page, and
the text of an element."""
from __future__ import annotations

from typing import Any

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
BROWSER_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--window-size=1400,2200", "--force-device-scale-factor=1", "--lang=en-US")
BROWSER_WAIT = 20


def text_of(browser: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, element_id).text.strip()
