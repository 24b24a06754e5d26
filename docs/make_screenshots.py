"""Screenshots of the two kinds of report for the docs page "Your own data".

Builds an image report (MobileNetV2 on scikit-image's and scikit-learn's photos, saved
as a folder with one subfolder per class) and a text report (all-MiniLM-L6-v2 on the
sentences that ship with skbilrp, saved as a TSV with a topic column) with the
``skbilrp report`` command, opens each in headless Chromium, clicks the first neighbour
entry and saves the page as ``docs/_static/report-images.png`` and
``docs/_static/report-texts.png``. Run from the repository root, once, and commit the
PNGs::

    python docs/make_screenshots.py     # or: make screenshots

Needs the test set-up (``make setup-test``: selenium, Debian's chromium and
chromium-driver, the MobileNetV2 and MiniLM weight wheels). Takes a few minutes on a CPU.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATIC = os.path.join(ROOT, "docs", "_static")
TOPICS = ("animals", "weather", "finance", "sports", "cooking")  # the shipped sentences, ten per topic


def photo_folder(root: str) -> str:
    """Sixteen photos in four class subfolders (mixed sizes, grey and colour); the folder's name."""
    from PIL import Image
    from skimage import data
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images
    classes = {"living": {"chelsea": data.chelsea(), "cat": data.cat(), "horse": ~data.horse() * 255,
                          "astronaut": data.astronaut()},
               "objects": {"coffee": data.coffee(), "rocket": data.rocket(), "clock": data.clock(),
                           "camera": data.camera()},
               "textures": {"brick": data.brick(), "grass": data.grass(), "gravel": data.gravel(),
                            "coins": data.coins()},
               "scenes": {"china": china, "flower": flower, "moon": data.moon(), "hubble": data.hubble_deep_field()}}
    for label, images in classes.items():
        os.makedirs(os.path.join(root, "photos", label))
        for name, pixels in images.items():
            Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(os.path.join(root, "photos", label, f"{name}.png"))
    return "photos"


def sentence_table(root: str) -> str:
    """The shipped sentences as a TSV with columns text and topic; the file's name."""
    with open(os.path.join(ROOT, "skbilrp", "data", "sentences.txt"), encoding="utf-8") as fh:
        lines = [line.strip() for line in fh if line.strip()]
    with open(os.path.join(root, "sentences.tsv"), "w", encoding="utf-8") as fh:
        fh.write("text\ttopic\n" + "".join(f"{s}\t{TOPICS[k // 10]}\n" for k, s in enumerate(lines)))
    return "sentences.tsv"


def report(args: list, out: str, cwd: str) -> dict:
    """Run ``skbilrp report`` in ``cwd`` (the page's title names the data as given) and
    return the report's data block."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "skbilrp", "report", *args, "-o", out]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, env=env, cwd=cwd)
    text = open(os.path.join(cwd, out), encoding="utf-8").read()
    return json.loads(re.search(r'id="report-data">(.*?)</script>', text, re.S).group(1))


def screenshot(html: str, data: dict, png: str, profile: str) -> None:
    """Open the report, click the first neighbour entry, save the top of the page."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                "--window-size=1400,1100", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    options.binary_location = shutil.which("chromium") or shutil.which("google-chrome")
    browser = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        browser.get("file://" + os.path.abspath(html))
        body = browser.find_element(By.TAG_NAME, "body")
        WebDriverWait(browser, 30).until(lambda _: body.get_attribute("data-ready") == "1")
        entry = next(e for e in data["entries"] if e.get("src") == "neighbour")
        key = f"{entry['i']},{entry['j']}"
        browser.find_element(By.CSS_SELECTOR, f'#entry-list tr[data-entry="{key}"]').click()
        view = browser.find_element(By.ID, "pair-view")
        WebDriverWait(browser, 10).until(lambda _: view.get_attribute("data-shown") == key)
        browser.execute_script("window.scrollTo(0, 0)")
        shown = browser.find_element(By.ID, "pair-similarity").text
        print(f"{os.path.basename(png)}: entry ({key}) clicked, similarity shown {shown}, in the data {entry['k']:.6f}")
        browser.save_screenshot(png)
    finally:
        browser.quit()


def main() -> None:
    os.makedirs(STATIC, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        images = report(["--images", photo_folder(tmp), "--size", "160", "--patch", "32", "--test-size", "4",
                         "--n-queries", "4", "--neighbors", "3", "--max-entries", "60"], "i.html", tmp)
        texts = report(["--texts", sentence_table(tmp), "--text-column", "text", "--label-column", "topic",
                        "--test-size", "10", "--n-queries", "4", "--neighbors", "3", "--max-entries", "60"],
                       "t.html", tmp)
        for name, data in (("images", images), ("texts", texts)):
            screenshot(os.path.join(tmp, f"{name[0]}.html"), data, os.path.join(STATIC, f"report-{name}.png"),
                       os.path.join(tmp, f"profile-{name}"))


if __name__ == "__main__":
    main()
