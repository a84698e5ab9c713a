"""lnzoo serve in a real browser: the CLI serves a run, headless Chromium uploads a phantom image through the
page, and the probabilities the page shows are those of lnzoo predict. Saves docs/serve.png (the README's).

Needs the Debian packages chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver); nothing is
ever downloaded: selenium gets the driver's path.
"""
from __future__ import annotations

import contextlib
import csv
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SCREENSHOT = REPO / "docs" / "serve.png"


def _browser_missing() -> str | None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        return f"needs {', '.join(missing)}: apt-get install chromium chromium-driver"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "needs selenium: pip install 'lnzoo[test]'"
    return None


pytestmark = pytest.mark.skipif(_browser_missing() is not None, reason=_browser_missing() or "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"lnzoo serve exited with {proc.returncode}: {proc.stderr.read()}")
        try:
            with urllib.request.urlopen(url + "healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"lnzoo serve did not answer {url}healthz within {timeout:.0f} s")


@contextlib.contextmanager
def serving(run: Path):
    """``lnzoo serve RUN`` on a free port of 127.0.0.1; yields its URL."""
    port = free_port()
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "lnzoo", "serve", str(run), "--port", str(port)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_healthy(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def server(tiny_run):
    with serving(tiny_run) as url:
        yield url


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_page_shows_lnzoo_predicts_probabilities(server, browser, tiny_run, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.conftest import run_cli

    with (tiny_run / "predictions.csv").open(newline="") as fh:
        image = Path(next(csv.DictReader(fh))["path"])
    predicted = run_cli("predict", str(image), "--model", str(tiny_run), "--out", str(tmp_path / "p.csv"))
    assert predicted.returncode == 0, predicted.stderr
    with (tmp_path / "p.csv").open(newline="") as fh:
        expected = next(csv.DictReader(fh))

    browser.get(server)
    wait = WebDriverWait(browser, 120)
    upload = wait.until(EC.presence_of_element_located((By.ID, "file-full")))
    assert "stage1_aux" in browser.find_element(By.ID, "model-name").text
    upload.send_keys(str(image))
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda d: d.find_element(By.ID, "result").get_attribute("data-state") in ("done", "error"))
    assert browser.find_element(By.ID, "result").get_attribute("data-state") == "done", \
        browser.find_element(By.ID, "form-error").text

    shown = browser.find_elements(By.CSS_SELECTOR, "td[data-kind='raw']")
    assert {(c.get_attribute("data-task"), c.get_attribute("data-class")) for c in shown} == {
        ("malignancy", "benign"), ("malignancy", "malignant"), ("enlargement", "not_enlarged"),
        ("enlargement", "enlarged")}
    for cell in shown:
        text = cell.text
        decimals = len(text.split(".")[1])
        want = float(expected[f"p_{cell.get_attribute('data-task')}_{cell.get_attribute('data-class')}"])
        assert abs(float(text) - want) <= 0.5 * 10 ** -decimals + 1e-6, (cell.get_attribute("data-class"), text, want)
    calls = {c.get_attribute("data-task"): c.text
             for c in browser.find_elements(By.CSS_SELECTOR, "[data-kind='call']")}
    assert set(calls) == {"malignancy", "enlargement"}
    assert browser.find_element(By.CSS_SELECTOR, "[data-kind='views']").text == "full"
    cam = browser.find_element(By.CSS_SELECTOR, "img[data-view='full']")
    assert cam.get_attribute("src").startswith("data:image/png;base64,")
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", cam))

    SCREENSHOT.parent.mkdir(exist_ok=True)
    shot = tmp_path / "serve.png"
    assert browser.save_screenshot(str(shot))
    shutil.copyfile(shot, SCREENSHOT)


def test_the_page_takes_a_report_and_a_mask_for_a_model_with_those_inputs(llnm_run, browser):
    import numpy as np
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from lnzoo.data.run_data import load_run_data, recipe_tasks
    from lnzoo.plugins import load_plugins
    from lnzoo.predict import predict_rows
    from lnzoo.recipe import load_recipe

    host = load_plugins()
    recipe = load_recipe(llnm_run / "recipe.toml", host=host)
    sample = next(s for s in load_run_data(recipe, recipe_tasks(recipe, host), host).pool
                  if s.cells.get("report_zh") and np.asarray(Image.open(s.cell_path("mask"))).any())
    expected = float(predict_rows([llnm_run], [sample], host)[0]["p_lnm_N1"])
    with serving(llnm_run) as url:
        browser.get(url)
        wait = WebDriverWait(browser, 120)
        wait.until(EC.presence_of_element_located((By.ID, "file-full"))).send_keys(str(sample.views["full"]))
        browser.find_element(By.ID, "input-mask").send_keys(str(sample.cell_path("mask")))
        for column in ("age", "sex", "report_zh"):
            browser.find_element(By.ID, f"cov-{column}").send_keys(sample.cells[column])
        browser.find_element(By.ID, "gradcam").click()  # off: this test is about the inputs
        browser.find_element(By.ID, "submit").click()
        wait.until(lambda d: d.find_element(By.ID, "result").get_attribute("data-state") in ("done", "error"))
        assert browser.find_element(By.ID, "result").get_attribute("data-state") == "done", \
            browser.find_element(By.ID, "form-error").text
        assert browser.find_element(By.CSS_SELECTOR, "[data-kind='inputs']").text == "covariates, report, morphology"
        shown = browser.find_element(By.CSS_SELECTOR, "td[data-kind='raw'][data-class='N1']").text
        assert abs(float(shown) - expected) <= 0.5 * 10 ** -len(shown.split(".")[1]) + 1e-6, (shown, expected)
