"""The HTML parity matrix as an operator sees it, in real headless Chromium.

Fails (never skips) when Chromium or chromedriver is missing: a skipped
browser test would hide exactly the regressions only a browser shows.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matrix_sample as sample  # registered by conftest.py
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from virtdrivers.endpoint import Evidence
from virtdrivers_conformance.matrix import OUTCOMES, write_all

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "build" / "artifacts" / "parity-matrix.png"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def _tool(path: str) -> str:
    """``path``, or the same program found on PATH; fails (never skips) when it is not installed."""
    found = path if Path(path).exists() else shutil.which(Path(path).name)
    if found is None:
        pytest.fail(f"{path} not found: run ./dev setup (it installs chromium and chromium-driver)")
    return found


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    chromium, chromedriver = _tool(CHROMIUM), _tool(CHROMEDRIVER)
    with tempfile.TemporaryDirectory(prefix="vd-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for arg in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            f"--user-data-dir={profile}",
            "--window-size=1500,1000",
            "--force-device-scale-factor=1",
        ):
            options.add_argument(arg)
        try:
            driver = webdriver.Chrome(service=Service(chromedriver), options=options)
        except WebDriverException as exc:
            pytest.fail(f"headless Chromium did not start ({exc.msg}): run ./dev setup")
        driver.set_page_load_timeout(15)
        try:
            yield driver
        finally:
            driver.quit()


def _no_alert(driver: webdriver.Chrome) -> None:
    try:
        text = driver.switch_to.alert.text
    except NoAlertPresentException:
        return
    pytest.fail(f"a hostile string executed: alert({text!r})")


def _click(driver: webdriver.Chrome, selector: str) -> None:
    """Scroll the element to mid-screen first, as a person would, so the sticky header does not cover it."""
    element = driver.find_element(By.CSS_SELECTOR, selector)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()


@pytest.mark.browser
def test_operator_sees_the_matrix(browser: webdriver.Chrome, tmp_path: Path) -> None:
    matrix: dict[str, Any] = sample.sample_matrix()
    page = write_all(matrix, tmp_path)["html"]
    browser.get(page.as_uri())
    time.sleep(0.2)
    _no_alert(browser)
    assert browser.title == "virtdrivers feature parity"

    # Every expected cell is displayed, with its label, not colour alone.
    cells = browser.find_elements(By.CSS_SELECTOR, "td[data-outcome]")
    assert len(cells) == len(matrix["features"]) * len(matrix["columns"])
    shown = {
        (c.get_attribute("data-column"), c.get_attribute("data-feature")): (c.get_attribute("data-outcome"), c.text)
        for c in cells
    }
    for cell in matrix["cells"]:
        outcome, text = shown[(cell["column"], cell["feature"])]
        label = OUTCOMES[cell["outcome"]]
        assert outcome == cell["outcome"]
        assert label.label in text, f"{cell['column']}/{cell['feature']} shows {text!r}"
        assert label.symbol in text, f"{cell['column']}/{cell['feature']} shows {text!r}"
    assert shown[("fake@memory", "events")] == ("missing", "—")
    assert shown[("hyperv@winrm", "create")] == ("error", "not run")
    lie = browser.find_element(By.CSS_SELECTOR, 'td[data-column="libvirt@qemu"][data-feature="snapshot_memory"]')
    assert lie.is_displayed()
    assert lie.get_attribute("title").startswith("declared but fails: AssertionError: snapshot of a running")

    # The legend is visible and lists the five outcomes with their counts.
    legend = browser.find_element(By.ID, "legend")
    assert legend.is_displayed()
    items = legend.find_elements(By.CSS_SELECTOR, "li[data-outcome]")
    assert [i.get_attribute("data-outcome") for i in items] == list(OUTCOMES)
    counts = {o: sum(1 for c in matrix["cells"] if c["outcome"] == o) for o in OUTCOMES}
    for item in items:
        outcome = OUTCOMES[item.get_attribute("data-outcome")]
        assert outcome.label in item.text
        assert str(counts[outcome.id]) in item.text

    # The legend explains the four evidence levels in the contract's words, and each column header shows its own.
    levels = legend.find_elements(By.CSS_SELECTOR, "li[data-evidence]")
    assert [i.get_attribute("data-evidence") for i in levels] == [e.value for e in Evidence]
    for item in levels:
        level = Evidence(item.get_attribute("data-evidence") or "")
        assert item.is_displayed()
        assert level.value in item.text
        assert level.doc in item.text
    headers = {h.get_attribute("data-column"): h for h in browser.find_elements(By.CSS_SELECTOR, "#matrix thead th")}
    for column in matrix["columns"]:
        header = headers[column["id"]]
        assert header.is_displayed()
        if column["evidence"]:
            badge = header.find_element(By.CSS_SELECTOR, ".evb")
            assert badge.is_displayed()
            assert badge.text == column["evidence"]
            assert badge.get_attribute("title") == Evidence(column["evidence"]).doc
    ovirt = headers["ovirt@simulator"]
    assert ovirt.find_element(By.CSS_SELECTOR, ".col-backend").text == sample.OVIRT_SIMULATOR
    assert ovirt.find_element(By.CSS_SELECTOR, ".col-imitates").text == f"imitating {sample.OVIRT_IMITATES}"
    lines = ovirt.text.splitlines()
    assert lines.index(sample.OVIRT_SIMULATOR) < lines.index(f"imitating {sample.OVIRT_IMITATES}")
    assert not any(line.startswith("oVirt Engine") for line in lines), "the simulator never reads as the product"
    vcsim = headers["vmware@vcsim"].find_element(By.CSS_SELECTOR, ".col-imitates")
    assert vcsim.text == f"imitating {sample.VCSIM_IMITATES}", "a hostile imitates string is shown literally"
    assert headers["libvirt@qemu"].find_elements(By.CSS_SELECTOR, ".col-imitates") == []

    # Hostile strings are shown literally, in the header and the errored column's report.
    body = browser.find_element(By.TAG_NAME, "body").text
    assert sample.SCRIPT in body
    assert "<img src=x onerror=alert(2)>" in body
    assert "did not run: BackendUnavailable" in body
    assert browser.execute_script("return document.querySelectorAll('script').length") == 1
    assert browser.execute_script("return document.querySelectorAll('img').length") == 0

    # The screenshot an operator would see: the whole page, before any dialog opens.
    height = browser.execute_script("return document.documentElement.scrollHeight")
    width = browser.execute_script("return document.documentElement.scrollWidth")
    browser.set_window_size(max(1500, width + 20), height + 140)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 50_000, "the screenshot looks blank"
    assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    browser.set_window_size(1500, 1000)

    # Clicking the lying cell opens its details: the message and every test's outcome.
    _click(browser, 'td[data-column="libvirt@qemu"][data-feature="snapshot_memory"] button')
    dialog = WebDriverWait(browser, 5).until(expected_conditions.visibility_of_element_located((By.ID, "details")))
    _no_alert(browser)
    text = dialog.text
    assert "libvirt@qemu · Memory snapshots" in text
    assert "declared but fails" in text
    assert 'expected power_state == "running" & memory restored, got "shutoff" | <script>' in text
    assert "TestSnapshotMemory::test_snapshot_memory" in text
    assert re.search(r"✗\s*failed", text)
    assert re.search(r"✓\s*passed", text)
    dialog.send_keys(Keys.ESCAPE)
    WebDriverWait(browser, 5).until(expected_conditions.invisibility_of_element_located((By.ID, "details")))

    # A failing mandatory cell: same path, its own message.
    _click(browser, 'td[data-column="libvirt@qemu"][data-feature="graceful_shutdown"] button')
    dialog = WebDriverWait(browser, 5).until(expected_conditions.visibility_of_element_located((By.ID, "details")))
    assert sample.FAIL_MESSAGE in dialog.text
    browser.find_element(By.ID, "details-close").click()
    WebDriverWait(browser, 5).until(expected_conditions.invisibility_of_element_located((By.ID, "details")))

    # The header row stays in view while the operator scrolls down the features.
    browser.execute_script("window.scrollTo(0, document.documentElement.scrollHeight)")
    top = browser.execute_script("return document.querySelector('#matrix thead th').getBoundingClientRect().top")
    assert abs(top) < 2, f"the header row scrolled away (top={top})"

    # The filter leaves only rows that need attention.
    browser.find_element(By.ID, "only-problems").click()
    rows = [r for r in browser.find_elements(By.CSS_SELECTOR, "tr[data-feature]") if r.is_displayed()]
    assert sorted(r.get_attribute("data-feature") for r in rows) == ["graceful_shutdown", "snapshot_memory", "suspend"]
    _no_alert(browser)
    logs = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert not logs, f"console errors (a CSP violation means the page's hash is stale): {logs}"


def test_a_missing_browser_fails_with_the_fix() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"run \./dev setup"):
        _tool("/nonexistent/vd-no-such-chromium")
