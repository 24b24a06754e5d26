"""The HTML report in a real browser: headless Chromium driven by selenium.

Clicks explained entries (in the entry list and on the heatmap) and checks that the
pair view shows the kernel's value; clicks a cell without an explanation and checks
the message. Needs Debian's ``chromium`` and ``chromium-driver`` packages and the
``selenium`` package (the README's test set-up and .ci/run install them); skipped
with the reason where they are missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from skbilrp.report import write_report  # noqa: E402


def _find(*names: str):
    for name in names:
        found = shutil.which(name) or (name if os.path.isabs(name) and os.access(name, os.X_OK) else None)
        if found:
            return found
    return None


CHROMIUM = _find("chromium", "/usr/bin/chromium", "chromium-browser", "google-chrome")
DRIVER = _find("chromedriver", "/usr/bin/chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="no headless browser: install Debian's chromium and chromium-driver packages "
           "(apt-get install chromium chromium-driver)",
)


@pytest.fixture(scope="module")
def built(digits_small, tmp_path_factory):
    d = digits_small
    path = tmp_path_factory.mktemp("browser") / "report.html"
    write_report(path, d["knn"], d["X"], d["y"], y_fit=d["y_fit"], queries=3, n_neighbors=3, max_entries=30,
                 audit=None, verbose=False)
    text = path.read_text(encoding="utf-8")
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', text, re.S).group(1))
    return path, d["K"], data


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture()
def page(browser, built):
    path = built[0]
    browser.get(path.resolve().as_uri())
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    return browser


def _shown(driver, key: str) -> None:
    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "pair-view").get_attribute("data-shown") == key
                                    and d.find_element(By.ID, "pair-content").is_displayed())


def _cell_offset(driver, data, cell):
    """Offset from the heatmap canvas's centre to the centre of a cell (selenium 4 offsets)."""
    w, h = driver.execute_script("var r = document.getElementById('heatmap-canvas').getBoundingClientRect();"
                                 "return [r.width, r.height];")
    hm = data["heatmap"]
    x = (cell[1] + 0.5) * w / hm["cols"] - w / 2
    y = (cell[0] + 0.5) * h / hm["rows"] - h / 2
    return int(round(x)), int(round(y))


def test_page_loads_without_errors(page, tmp_path):
    severe = [e for e in page.get_log("browser") if e.get("level") == "SEVERE"]
    assert not severe, severe
    assert len(page.find_elements(By.CSS_SELECTOR, "#heatmap-marks .entry-mark")) == 30
    page.save_screenshot(str(tmp_path / "report.png"))
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_click_entry_shows_its_pair_view(page, built, tmp_path):
    _, K, data = built
    entry = data["entries"][4]  # a neighbour pair of the second query
    i, j = entry["i"], entry["j"]
    row = page.find_element(By.CSS_SELECTOR, f'#entry-list tr[data-entry="{i},{j}"]')
    row.click()
    _shown(page, f"{i},{j}")
    sim = page.find_element(By.ID, "pair-similarity")
    assert sim.text == f"{K[i, j]:.4f}"
    assert float(sim.get_attribute("data-value")) == pytest.approx(K[i, j], abs=1e-12)
    err = float(page.find_element(By.ID, "pair-error").get_attribute("data-value"))
    assert abs(err) < 1e-4
    links = page.find_elements(By.CSS_SELECTOR, "#pair-figure path.link")
    assert len(links) == len(entry["links"]) == 30
    assert len(page.find_elements(By.CSS_SELECTOR, "#pair-figure canvas")) == 2
    page.save_screenshot(str(tmp_path / "pair.png"))
    assert (tmp_path / "pair.png").stat().st_size > 10_000


def test_click_heatmap_cell_with_an_entry(page, built):
    _, K, data = built
    entry = next(e for e in data["entries"] if e["src"] == "block")
    canvas = page.find_element(By.ID, "heatmap-canvas")
    ActionChains(page).move_to_element_with_offset(canvas, *_cell_offset(page, data, entry["cell"])).click().perform()
    in_cell = {f"{e['i']},{e['j']}" for e in data["entries"] if e["cell"] == entry["cell"]}
    WebDriverWait(page, 10).until(lambda d: d.find_element(By.ID, "pair-view").get_attribute("data-shown") in in_cell)
    i, j = map(int, page.find_element(By.ID, "pair-view").get_attribute("data-shown").split(","))
    assert page.find_element(By.ID, "pair-similarity").text == f"{K[i, j]:.4f}"


def test_click_cell_without_explanation_says_how_to_include_it(page, built):
    _, _, data = built
    used = np.array([e["cell"] for e in data["entries"]])
    hm = data["heatmap"]
    free = next((r, c) for r in range(hm["rows"]) for c in range(hm["cols"])
                if np.abs(used - [r, c]).max(axis=1).min() >= 3)  # clear of every mark
    canvas = page.find_element(By.ID, "heatmap-canvas")
    ActionChains(page).move_to_element_with_offset(canvas, *_cell_offset(page, data, free)).click().perform()
    message = page.find_element(By.ID, "pair-message")
    WebDriverWait(page, 10).until(lambda d: message.is_displayed())
    i, j = data["row_order"][free[0]], data["col_order"][free[1]]
    assert "No explanation was precomputed" in message.text and f"pairs=[({i}, {j})]" in message.text
    assert not page.find_element(By.ID, "pair-content").is_displayed()
