"""Screenshots of the three kinds of report for the docs page "Your own data".

Builds an image report (MobileNetV2 on scikit-image's and scikit-learn's photos, saved
as a folder with one subfolder per class) and a text report (all-MiniLM-L6-v2 on the
sentences that ship with skbilrp, saved as a TSV with a topic column) with the
``skbilrp report`` command, opens each in headless Chromium, clicks the first neighbour
entry and saves the page as ``docs/_static/report-images.png`` and
``docs/_static/report-texts.png``. The cross-modal report (the ConSE-style
``zero_shot_imagenet`` image tower and MiniLM, five prompts as rows, seven scikit-image
photos as columns) is written with the Python API, as the command has no cross-modal
option, and saved as ``docs/_static/report-cross-modal.png``. Run from the repository
root, once, and commit the PNGs::

    python docs/make_screenshots.py                 # or: make screenshots
    python docs/make_screenshots.py cross-modal     # only some of images, texts, cross-modal

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


PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle", "hubble_deep_field", "camera")
PROMPTS = ("a cat", "a cup of coffee", "a rocket", "a motorcycle", "galaxies in space")


def cross_modal_report(out: str) -> dict:
    """The report of a CrossModalKernel fitted on the photos, the prompts as rows; its data block."""
    from skimage import data as photos

    sys.path.insert(0, ROOT)
    from skbilrp import CrossModalKernel
    from skbilrp.io import resize_center_crop
    from skbilrp.models import mobilenet_v2_rules, zero_shot_imagenet
    from skbilrp.report import write_report

    def load(name: str) -> np.ndarray:
        image = getattr(photos, name)()
        image = image[0] if isinstance(image, tuple) else image  # the motorcycle is a stereo pair
        image = np.stack([image] * 3, -1) if image.ndim == 2 else image  # the camera man is grey
        return resize_center_crop(np.transpose(image, (2, 0, 1)) / 255.0, 224).numpy()

    images = np.stack([load(n) for n in PHOTOS])
    image_model = zero_shot_imagenet("mobilenet_v2")
    # MobileNetV2's own rules: plain LRP-0 through its 17 ImageNet blocks blows up (sums of order 1e11)
    kern = CrossModalKernel(image_model, rules=mobilenet_v2_rules(image_model), pooling=32).fit(images)
    # text-to-image search, the direction this model ranks well: each prompt's top photos
    write_report(out, kern, list(PROMPTS), queries=3, n_neighbors=2, max_entries=12, names_fit=list(PHOTOS),
                 title="skbilrp report: zero-shot MobileNetV2 x MiniLM, prompts x photos")
    text = open(out, encoding="utf-8").read()
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


def main(kinds: list) -> None:
    os.makedirs(STATIC, exist_ok=True)
    unknown = set(kinds) - {"images", "texts", "cross-modal"}
    if unknown:
        raise SystemExit(f"unknown report kinds {sorted(unknown)}: choose among images, texts, cross-modal")
    kinds = kinds or ["images", "texts", "cross-modal"]
    with tempfile.TemporaryDirectory() as tmp:
        built = {}
        if "images" in kinds:
            built["images"] = report(["--images", photo_folder(tmp), "--size", "160", "--patch", "32", "--test-size",
                                      "4", "--n-queries", "4", "--neighbors", "3", "--max-entries", "60"],
                                     "i.html", tmp)
        if "texts" in kinds:
            built["texts"] = report(["--texts", sentence_table(tmp), "--text-column", "text", "--label-column", "topic",
                                     "--test-size", "10", "--n-queries", "4", "--neighbors", "3", "--max-entries",
                                     "60"], "t.html", tmp)
        if "cross-modal" in kinds:
            built["cross-modal"] = cross_modal_report(os.path.join(tmp, "c.html"))
        for name, data in built.items():
            screenshot(os.path.join(tmp, f"{name[0]}.html"), data, os.path.join(STATIC, f"report-{name}.png"),
                       os.path.join(tmp, f"profile-{name}"))


if __name__ == "__main__":
    main(sys.argv[1:])
