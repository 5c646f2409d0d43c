"""The stack a user starts with scripts/stack.sh (DEBUG off, no test server) serves the admin's static files, so an
operator who logs in sees the styled admin and dashboard, not bare HTML. Checked in a real headless Chromium
(Debian's chromium and chromium-driver; scripts/services.sh browser installs them).

The stack gets a port, a VAR_DIR and a SQLite database of its own, so a user's stack is never touched.
"""
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.browser import BROWSER_WAIT as WAIT
from tests.support.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
STACK = REPO_ROOT / "scripts" / "stack.sh"
PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
# The admin's header is painted in its --secondary colour (#417690) by admin/css/base.css; unstyled, it is
# transparent (rgba(0, 0, 0, 0)).
ADMIN_HEADER_BACKGROUND = "rgba(65, 118, 144, 1)"


@dataclass
class Stack:
    url: str
    env: dict[str, str]
    var_dir: Path


def run(command: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """scripts/stack.sh start on a free port, with a superuser admin/password; stopped at the end."""
    var_dir = tmp_path_factory.mktemp("stack") / "var"
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("CELERY_", "SQS_", "DJANGO_SUPERUSER_"))
           and key not in ("DATABASE_URL", "REDIS_URL", "JOB_WORK_ROOT")}
    env.update({
        "DJANGO_SETTINGS_MODULE": "infra_ainode.settings",
        "DEBUG": "false",
        "VAR_DIR": str(var_dir),
        "DATABASE_URL": f"sqlite:///{var_dir / 'db.sqlite3'}",
        "WEB_PORT": str(free_port()),
        "MODEL_SYNC_INTERVAL": "0",
    })
    try:
        run([str(STACK), "start"], env)
        run([str(PYTHON), "manage.py", "createsuperuser", "--noinput"],
            env | {"DJANGO_SUPERUSER_USERNAME": "admin", "DJANGO_SUPERUSER_PASSWORD": "password",
                   "DJANGO_SUPERUSER_EMAIL": "admin@example.com"})
        yield Stack(url=f"http://127.0.0.1:{env['WEB_PORT']}", env=env, var_dir=var_dir)
    finally:
        subprocess.run([str(STACK), "stop"], cwd=REPO_ROOT, env=env, capture_output=True, timeout=60)


def header_background(browser) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, "header").value_of_css_property("background-color")


def not_found_page(url: str) -> str:
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(url, timeout=10)
    assert answer.value.code == 404
    return answer.value.read().decode(errors="replace")


def test_the_stack_runs_without_debug_so_django_itself_serves_no_static_files(stack):
    # With DEBUG on, runserver would serve static files by itself and hide a missing WhiteNoise.
    assert "URLconf" not in not_found_page(f"{stack.url}/no-such-page")
    with urllib.request.urlopen(f"{stack.url}/static/admin/css/base.css", timeout=10) as css:
        assert css.status == 200 and css.headers.get_content_type() == "text/css"
        assert b"--header-bg" in css.read()


def test_an_operator_logs_in_to_the_admin_of_the_stack_and_sees_it_styled(stack, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as shown
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT)
    browser.get(f"{stack.url}/admin/")
    wait.until(shown.presence_of_element_located((By.ID, "id_username")))
    assert header_background(browser) == ADMIN_HEADER_BACKGROUND, "the login page is not styled"

    browser.find_element(By.ID, "id_username").send_keys("admin")
    browser.find_element(By.ID, "id_password").send_keys("password")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait.until(shown.element_to_be_clickable((By.LINK_TEXT, "Usage dashboard")))
    assert header_background(browser) == ADMIN_HEADER_BACKGROUND, "the admin's index is not styled"
    # The index's module tables are laid out by the stylesheet too: captions get the admin's colours.
    caption = browser.find_element(By.CSS_SELECTOR, "#content-main .module caption")
    assert caption.value_of_css_property("background-color") != "rgba(0, 0, 0, 0)"

    browser.find_element(By.LINK_TEXT, "Usage dashboard").click()
    wait.until(shown.presence_of_element_located((By.ID, "range-form")))
    assert header_background(browser) == ADMIN_HEADER_BACKGROUND, "the usage dashboard is not styled"
