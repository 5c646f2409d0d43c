"""The API's docs pages, as a developer meets them in a real headless Chromium: Swagger UI and ReDoc render every
operation of the schema from files this server serves (nothing from a CDN).

Set API_DOCS_SCREENSHOT=docs/api-docs.png to keep Swagger UI's screenshot for the README.
"""
import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

WAIT = 30


def resources_from_elsewhere(browser, origin: str) -> list[str]:
    """The URLs the page asked for that are not on this server and that the page's security policy did not refuse
    (ReDoc's bundle draws a vendor's logo from a CDN: the policy refuses it before any request is made)."""
    urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    refused = " ".join(entry["message"] for entry in browser.get_log("browser")
                       if "Content Security Policy" in entry["message"])
    return [url for url in urls + [browser.current_url] if urlparse(url).netloc not in ("", urlparse(origin).netloc)
            and not url.startswith(("data:", "blob:")) and url not in refused]


def operation_count(client) -> int:
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    return sum(len(item) for item in schema["paths"].values())


def test_swagger_ui_shows_every_operation_from_files_served_here(live_server, browser, anonymous, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    expected = operation_count(anonymous)
    browser.get(f"{live_server.url}/api/docs/")
    WebDriverWait(browser, WAIT).until(
        lambda driver: len(driver.find_elements(By.CSS_SELECTOR, ".opblock")) >= expected)

    blocks = browser.find_elements(By.CSS_SELECTOR, ".opblock")
    assert len(blocks) == expected
    paths = {block.find_element(By.CSS_SELECTOR, ".opblock-summary-path").text.replace("\u200b", "")
             for block in blocks}
    assert {"/run", "/status/{job_id}", "/models", "/deploy"} <= paths
    assert "Infra AI Node API" in browser.find_element(By.CSS_SELECTOR, ".info .title").text
    assert resources_from_elsewhere(browser, live_server.url) == []

    screenshot = tmp_path / "api-docs.png"
    assert browser.save_screenshot(str(screenshot))
    if os.environ.get("API_DOCS_SCREENSHOT"):
        shutil.copyfile(screenshot, Path(os.environ["API_DOCS_SCREENSHOT"]))


def test_redoc_shows_every_operation_from_files_served_here(live_server, browser, anonymous):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    expected = operation_count(anonymous)
    browser.get(f"{live_server.url}/api/redoc/")
    # ReDoc draws one section per operation, each with its id.
    WebDriverWait(browser, WAIT).until(
        lambda driver: len(driver.find_elements(By.CSS_SELECTOR, "[data-section-id^='operation/']")) >= expected)
    sections = browser.find_elements(By.CSS_SELECTOR, "[data-section-id^='operation/']")
    assert len(sections) == expected
    assert "Infra AI Node API" in browser.find_element(By.TAG_NAME, "h1").text
    assert resources_from_elsewhere(browser, live_server.url) == []
