"""Fixtures of the API tests: a headless Chromium that cannot reach past this machine and keeps its console log."""
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.billing.test_dashboard_in_a_browser import CHROMEDRIVER, CHROMIUM, FLAGS


@pytest.fixture
def browser(tmp_path: Path) -> Iterator["WebDriver"]:  # noqa: F821
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER), (
        "Chromium is missing: scripts/services.sh browser installs Debian's chromium and chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    # Any name but the loopback's resolves to nothing: whatever a page asks of elsewhere never leaves the machine.
    options.add_argument("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost")
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log")),
                              options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
