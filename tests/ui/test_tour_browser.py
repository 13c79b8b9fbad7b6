"""The tour as a user meets it: JupyterLab in headless Chromium (make test-ui, not make test).

Runs every cell of 00_tour (a copy, in a throw-away folder), moves the tau slider with the keyboard and checks the
masked share shown against what the library computes for that tau, saves, reloads and checks that the static token
view and the saved widget state survive. Screenshots go to results/ui/.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.ui

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "results" / "ui"
RUN_ALL_TIMEOUT_S = 1200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on a free loopback port with a token, serving a copy of the tour; results in a temp folder."""
    work = tmp_path_factory.mktemp("ui")
    (work / "nb").mkdir()
    shutil.copy(ROOT / "notebooks" / "00_tour.ipynb", work / "nb" / "00_tour.ipynb")
    port, token = _free_port(), os.urandom(12).hex()
    env = {**os.environ, "STMKIT_RESULTS": str(work / "results"), "OMP_WAIT_POLICY": "PASSIVE",
           "JUPYTER_CONFIG_DIR": str(work / "jupyter-config"), "JUPYTERLAB_WORKSPACES_DIR": str(work / "ws")}
    cmd = [str(Path(sys.executable).parent / "jupyter"), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work / 'nb'}",
           "--LabApp.expose_app_in_browser=True", "--allow-root"]
    log = open(work / "lab.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"JupyterLab did not start: {(work / 'lab.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield {"url": url, "token": token, "work": work}
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1100"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=opts)
    yield driver
    driver.quit()


def _wait(driver, script: str, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(1)
    _shot(driver, "timeout")
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def _shot(driver, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


KERNEL_IDLE = """
const app = window.jupyterapp; if (!app) return false;
const w = app.shell.currentWidget; if (!w || !w.sessionContext || !w.content) return false;
const k = w.sessionContext.session && w.sessionContext.session.kernel;
return !!(k && k.status === 'idle' && w.content.widgets.length > 0);
"""

RUN_STATE = """
const w = window.jupyterapp.shell.currentWidget;
const code = w.content.widgets.filter(c => c.model.type === 'code');
const errors = [];
for (const c of code) for (const o of c.model.outputs.toJSON())
  if (o.output_type === 'error') errors.push(o.ename + ': ' + o.evalue);
const k = w.sessionContext.session.kernel;
const done = code.every(c => c.model.executionCount !== null) && k.status === 'idle';
return {done: done, errors: errors, ran: code.filter(c => c.model.executionCount !== null).length, cells: code.length};
"""

SUMMARY = re.compile(r"tau = ([0-9.]+|∞): .*?(\d+\.\d)% of the (\d+) response tokens", re.S)


def _live_summary(driver) -> tuple[str, float, int]:
    """(tau, dataset share %, tokens) from the live explorer's summary line (the last one on the page)."""
    texts = driver.execute_script(
        "return Array.from(document.querySelectorAll('.widget-html-content')).map(e => e.innerText);")
    found = [m for t in texts for m in [SUMMARY.search(t)] if m]
    assert found, f"no explorer summary among the widget outputs: {texts[:3]}"
    m = found[-1]
    return m.group(1), float(m.group(2)), int(m.group(3))


@functools.cache
def _tour_scores() -> list:
    """The tour's 8 problems scored through the same library calls the tour makes (from the cache it filled)."""
    import stmkit.experiment as ex

    run = ex.start("tour", "cpu-demo", "", "ui-check", str(SHOTS.parent / "ui-check"), "ui-check")
    return run.score(run.target_examples("train", 8), "tour")


def _expected_share(tau: float) -> tuple[float, int]:
    """The share the library masks at tau on the tour's data."""
    from stmkit.explorer import masked_counts

    masked, total = masked_counts(_tour_scores(), tau)
    return round(100 * masked / total, 1), total


def _reload_and_read(driver) -> tuple[str, str]:
    """Reload the page, bring the explorer's cell into view; (its static view's text, the page's text)."""
    from selenium.webdriver.common.by import By

    driver.refresh()
    _wait(driver, KERNEL_IDLE, 120, "the notebook after reload")
    # JupyterLab renders only the cells near the viewport: bring the explorer's cell (the 7th) into view first
    driver.execute_script("const w = window.jupyterapp.shell.currentWidget.content;"
                          "w.activeCellIndex = 6; w.scrollToItem(6, 'start');")
    static = _wait(driver, "return Array.from(document.querySelectorAll('.jp-OutputArea-output'))"
                           ".map(e => e.innerText).find(t => t.includes('Static view at the starting tau')) || null;",
                   30, "the static token view after reload")
    time.sleep(2)
    _shot(driver, "03_after_reload")
    return static, driver.find_element(By.TAG_NAME, "body").text


def test_the_tour_runs_its_slider_moves_and_a_reload_keeps_the_tokens(lab, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    t0 = time.time()
    browser.get(f"{lab['url']}/lab/tree/00_tour.ipynb?token={lab['token']}")
    _wait(browser, KERNEL_IDLE, 120, "the stmkit kernel to be idle")
    t_kernel = time.time() - t0
    browser.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells');")
    t1 = time.time()
    state = _wait(browser, f"const s = (() => {{ {RUN_STATE} }})(); return (s.done || s.errors.length) ? s : null;",
                  RUN_ALL_TIMEOUT_S, "Run All to finish")
    t_run = time.time() - t1
    _shot(browser, "01_after_run_all")
    assert not state["errors"], f"cell errors: {state['errors']}"
    assert state["ran"] == state["cells"]

    # The live slider: a keyboard user moves it right; the share shown must be the library's for that tau.
    tau0, share0, total = _live_summary(browser)
    assert tau0 == "2.5"
    expected0, expected_total = _expected_share(2.5)
    assert (share0, total) == (expected0, expected_total)
    handle = browser.find_elements(By.CSS_SELECTOR, ".widget-hslider .noUi-handle, .widget-hslider [role=slider]")
    assert handle, "no slider handle rendered"
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", handle[0])
    handle[0].click()
    for _ in range(2):
        handle[0].send_keys(Keys.ARROW_RIGHT)
        time.sleep(0.5)
    time.sleep(1.5)
    tau1, share1, _ = _live_summary(browser)
    _shot(browser, "02_slider_moved")
    assert tau1 not in ("2.5", "∞"), f"the slider did not move (tau {tau1})"
    assert share1 == _expected_share(float(tau1))[0] and share1 < share0

    # Save (widget state included: make setup sets saveState), reload: the static view and the widgets come back.
    # Save once the kernel has finished the slider's update, so the saved state holds the value shown.
    _wait(browser, KERNEL_IDLE, 60, "the kernel to finish the slider's update")
    time.sleep(1)
    browser.execute_script("return window.jupyterapp.commands.execute('docmanager:save');")
    saved = lab["work"] / "nb" / "00_tour.ipynb"
    deadline = time.time() + 30
    while "application/vnd.jupyter.widget-state+json" not in saved.read_text() and time.time() < deadline:
        time.sleep(1)
    notebook = json.loads(saved.read_text())
    state = notebook.get("metadata", {}).get("widgets", {}).get("application/vnd.jupyter.widget-state+json")
    assert state, "widget state not saved"
    # Every widget the saved outputs show is in the saved state, so the notebook reopened anywhere can draw it (a
    # progress bar that closed its widget when done left an output pointing at nothing: "model not found")
    shown = {o["data"]["application/vnd.jupyter.widget-view+json"]["model_id"] for c in notebook["cells"]
             for o in c.get("outputs", []) if "application/vnd.jupyter.widget-view+json" in o.get("data", {})}
    assert shown and shown <= set(state["state"]), f"widgets shown but not saved: {shown - set(state['state'])}"
    static, body = _reload_and_read(browser)
    assert "STM masks tokens with probability below" in static
    assert "Error displaying widget" not in body and "model not found" not in body
    print(f"kernel idle after {t_kernel:.0f} s; Run All {t_run:.0f} s; screenshots in {SHOTS}")
