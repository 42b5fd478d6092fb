"""The web page in a real headless browser: Debian's `chromium` and `chromium-driver` driven by Selenium (pointed at
/usr/bin/chromedriver, so Selenium Manager never downloads a browser or a driver).

Without them (or without selenium) the page tests are skipped, loudly (a line in the summary), and under CI
(`CI=true`) they fail instead: `make test` installs both with apt-get where it can.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("COUNCIL_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("COUNCIL_CHROMEDRIVER", "/usr/bin/chromedriver")
REQUIRE_BROWSER = os.environ.get("CI", "").lower() in ("1", "true", "yes")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,1000",
)  # fmt: skip


def _missing() -> str | None:
    """Why the browser tests cannot run here (None: they can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (`pip install -e '.[dev]'`)"
    absent = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file()]
    if absent:
        return f"{', '.join(absent)} missing (`apt-get install -y chromium chromium-driver`; `make test` does it)"
    return None


MISSING = _missing()
WHY = f"the web page's browser tests did NOT run: {MISSING}"
_skipped: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if MISSING and here in Path(str(item.fspath)).parents:
            _skipped.append(item.nodeid)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _skipped and not REQUIRE_BROWSER:
        terminalreporter.write_line(f"SKIPPED {len(_skipped)} browser tests: {WHY}", red=True, bold=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module, with a fresh profile folder (removed after)."""
    if MISSING:
        if REQUIRE_BROWSER:
            pytest.fail(f"CI=true but {WHY}", pytrace=False)
        pytest.skip(WHY)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="council-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
