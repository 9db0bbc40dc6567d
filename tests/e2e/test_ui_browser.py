"""The dashboard page (`GET /ui`) in a real browser: Chromium, headless, driven by Selenium with
the system's chromedriver. The page loads without a console error, its charts draw once traffic
has gone through the official SDK, the backends and the last requests are listed (never message
text), and the routing playground shows a decision.

Chromium and chromedriver come from the Debian packages (`.ci/run` installs them); without them
the test is skipped, unless SWITCHYARD_REQUIRE_BROWSER is set (as in CI), where it fails.
SWITCHYARD_UI_SCREENSHOT=path saves a screenshot of the page there (the README's comes from it).
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Iterator

import pytest

from conftest import CLOUD_MODEL, LOCAL_MODEL, UPSTREAM_KEY, config_head

CHARTS = ["chart-routes", "chart-share", "chart-cost", "chart-cache", "chart-latency"]
SECRET_WORDS = "zanzibar quokka"


@pytest.fixture(scope="module")
def gateway_config_text(free_port, mock_upstream) -> str:
    return config_head(free_port, mock_upstream.url, mock_upstream.url) + f"""\
models:
  - {{name: auto, upstream: local}}
  - {{name: gpt-4o, upstream: cloud}}
default_route: {{upstream: cloud}}
routing:
  classify: [auto]
  upstreams: {{local: local, cloud: cloud, hybrid: cloud}}
pricing:
  baseline: gpt-4o
  models:
    gpt-4o: {{input: 2.50, output: 10.00}}
    {LOCAL_MODEL}: {{input: 0, output: 0}}
cache:
  ttl: 10m
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        message = "no Chromium: `apt-get install chromium chromium-driver`"
        if os.environ.get("SWITCHYARD_REQUIRE_BROWSER"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1800", "--no-proxy-server"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait_until(what: str, check, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def rows(browser, table: str) -> list[str]:
    """The text of a table's rows, read in one go (the page redraws them as it refreshes)."""
    script = f"return [...document.querySelectorAll('#{table} tbody tr')].map(r => r.innerText)"
    return browser.execute_script(script)


def test_the_dashboard_shows_the_traffic_and_decides_in_the_playground(browser, client, gateway) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{gateway.base_url}/ui?every=300")
    assert browser.title == "Switchyard"
    # Traffic: local and cloud answers, a cache hit, a bad request.
    for i in range(4):
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": f"hi {i}, {SECRET_WORDS}"}])
    for i in range(2):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": f"explain {i}"}])
    for _ in range(2):
        client.chat.completions.create(model="gpt-4o", temperature=0, messages=[{"role": "user", "content": "cached"}])
    time.sleep(0.7)
    for i in range(2):
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": f"again {i}"}])

    # Each chart draws lines from several refreshes.
    for chart in CHARTS:
        wait_until(f"{chart} to draw", lambda: int(browser.find_element(By.ID, chart).get_attribute("data-points") or 0) >= 2)
    recent = wait_until("the last requests", lambda: (lambda r: r if len(r) >= 10 else None)(
        [r for r in rows(browser, "recent") if "/v1/chat/completions" in r]))
    cells = [set(r.split("\t")) for r in recent]
    assert any("local" in c for c in cells) and any("cloud" in c for c in cells), recent
    assert any("hit" in c for c in cells), recent
    page = browser.execute_script("return document.body.innerText")
    assert SECRET_WORDS not in page, "message text never reaches the page"
    backends = rows(browser, "backends")
    assert len(backends) == 2 and all("up" in b.split("\t") for b in backends), backends
    cards = browser.execute_script("return document.getElementById('cards').innerText")
    assert "local share" in cards and "saved" in cards

    # The playground asks /v1/route and shows the decision, with the scorer's features.
    text = browser.find_element(By.ID, "play-text")
    text.clear()
    text.send_keys("Prove that there are infinitely many primes, step by step.")
    browser.find_element(By.CSS_SELECTOR, "#play-form button").click()
    decision = wait_until("a decision", lambda: browser.execute_script(
        "const d = document.getElementById('play-decision'); return d && d.innerText"))
    assert decision.split()[0] in ("local", "cloud", "hybrid") and "rule scorer" in decision, decision
    assert "last_user_tokens" in browser.execute_script("return document.getElementById('play-out').innerText")

    screenshot = os.environ.get("SWITCHYARD_UI_SCREENSHOT")
    if screenshot:
        browser.save_screenshot(screenshot)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors
