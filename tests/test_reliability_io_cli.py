"""Reliability of image reading and of the ``skbilrp`` command's one-line errors.

High-bit-depth and palette images, a missing Pillow named as such, weights files that
are no VGG-16 state_dict, and input sizes whose work cannot fit in memory.
"""

from __future__ import annotations

import collections
import os
import pickle
import struct
import subprocess
import sys
import zlib

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import skbilrp  # noqa: E402
from skbilrp.cli import main  # noqa: E402
from skbilrp.io import load_image, read_image  # noqa: E402

F32 = np.finfo(np.float32).eps


def _save_png(path, array):
    """Save a float array in [0, 1], (H, W) or (H, W, 3), as an 8-bit PNG."""
    Image.fromarray(np.round(np.asarray(array) * 255).astype(np.uint8)).save(path)
    return str(path)


def _png16(path, values):
    """Write a 16-bit PNG by hand (grey ``(H, W)`` or RGB ``(H, W, 3)`` uint16): Pillow
    cannot write 16-bit colour, so this is an oracle independent of its encoder."""
    values = np.asarray(values, dtype=np.uint16)
    h, w = values.shape[:2]
    color_type = 0 if values.ndim == 2 else 2
    raw = b"".join(b"\x00" + values[i].astype(">u2").tobytes() for i in range(h))  # filter 0

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                + chunk(b"IEND", b""))
    return str(path)


#: 0 .. 65535 in 256 equal steps: mean exactly 32767.5, i.e. 0.5 of white
GRADIENT16 = np.linspace(0, 65535, 256).round().astype(np.uint16)[None].repeat(3, axis=0)


@pytest.fixture
def two_pngs(tmp_path):
    rng = np.random.default_rng(0)
    return (_save_png(tmp_path / "a.png", rng.random((40, 48, 3))),
            _save_png(tmp_path / "b.png", rng.random((40, 40, 3))))


def _single_error_line(err, *needles):
    """``err`` (stderr) holds exactly one ``skbilrp: error:`` line containing every needle."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("skbilrp: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------- 1. bit depths


def test_16bit_grey_png_is_scaled_by_65535_not_clipped(tmp_path):
    # Pillow opens a 16-bit grey PNG as mode "I;16"; convert("RGB") clipped it at 255
    for path in (_png16(tmp_path / "hand.png", GRADIENT16), str(tmp_path / "pillow.png")):
        if path.endswith("pillow.png"):
            Image.fromarray(GRADIENT16).save(path)
        with Image.open(path) as img:
            assert img.mode.startswith("I;16")
        rgb = read_image(path)
        assert rgb.shape == (3, 256, 3) and rgb.dtype == np.float32
        expected = GRADIENT16.astype(np.float64) / 65535
        np.testing.assert_allclose(rgb, np.repeat(expected[..., None], 3, axis=-1), rtol=0, atol=F32)
        assert rgb[0, 0, 0] == 0.0 and rgb[0, -1, 0] == 1.0
        assert abs(rgb.mean(dtype=np.float64) - 0.5) < F32
    x = load_image(path, size=None, grayscale=True)
    assert abs(x.mean(dtype=np.float64) - 0.5) < F32


@pytest.mark.parametrize("orientation, turn", [(1, lambda a: a), (3, lambda a: np.rot90(a, 2)),
                                               (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1))])
def test_exif_orientation_is_applied_as_viewers_show_the_image(tmp_path, orientation, turn):
    """A phone photo stores its pixels sideways and says how to turn them (EXIF tag 274)."""
    stored = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[274] = orientation
    path = tmp_path / f"o{orientation}.png"
    img.save(path, exif=exif)
    np.testing.assert_array_equal(read_image(path), turn(stored).astype(np.float32) / np.float32(255.0))


def test_16bit_rgb_png_keeps_its_range(tmp_path):
    # Pillow has no 16-bit colour mode: it decodes 48-bit PNGs to 8 bits per channel, so
    # the values are right to 1/255 (documented in read_image), and 0 and white are exact
    rgb16 = np.stack([GRADIENT16, GRADIENT16[:, ::-1], np.full_like(GRADIENT16, 65535)], axis=-1)
    rgb = read_image(_png16(tmp_path / "rgb16.png", rgb16))
    assert rgb.shape == (3, 256, 3)
    np.testing.assert_allclose(rgb, rgb16 / 65535, rtol=0, atol=1 / 255)
    assert abs(rgb[..., 0].mean(dtype=np.float64) - 0.5) < 1 / 255
    assert rgb[0, 0, 0] == 0.0 and rgb[0, -1, 0] == 1.0 and rgb[0, 0, 1] == 1.0
    assert np.all(rgb[..., 2] == 1.0)


def test_32bit_integer_and_float_images(tmp_path):
    # mode "I" holding 16-bit values (older Pillow opens 16-bit PNGs so) scales by 65535
    wide = GRADIENT16.astype(np.int32)
    Image.fromarray(wide).save(tmp_path / "i32.tif")
    np.testing.assert_allclose(read_image(tmp_path / "i32.tif")[..., 0], wide / 65535, rtol=0, atol=F32)
    Image.fromarray(wide * 2).save(tmp_path / "i32_wide.tif")
    with pytest.raises(ValueError, match=r"i32_wide\.tif.*beyond 16 bits.*8 or 16 bits"):
        read_image(tmp_path / "i32_wide.tif")
    # float images must already lie in [0, 1]; other ranges are refused, not clipped
    unit = np.linspace(0, 1, 50, dtype=np.float32)[None].repeat(2, axis=0)
    Image.fromarray(unit).save(tmp_path / "f.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "f.tif")[..., 1], unit)
    Image.fromarray(unit * 255).save(tmp_path / "f255.tif")
    with pytest.raises(ValueError, match=r"f255\.tif.*float pixels in \[0, 255\].*rescale"):
        read_image(tmp_path / "f255.tif")


def test_palette_and_8bit_images_are_unchanged(tmp_path):
    rng = np.random.default_rng(1)
    rgb8 = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb8).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png"), rgb8.astype(np.float32) / np.float32(255))
    grey8 = rgb8[..., 0]
    Image.fromarray(grey8).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_image(tmp_path / "grey.png")[..., 2], grey8 / np.float32(255))
    # palette: index 1 is pure red, index 2 a mid grey; "PA" keeps the colours, drops alpha
    palette = Image.new("P", (3, 1))
    palette.putpalette([0, 0, 0, 255, 0, 0, 128, 128, 128])
    palette.putdata([0, 1, 2])
    palette.save(tmp_path / "p.png")
    expected = np.array([[[0, 0, 0], [255, 0, 0], [128, 128, 128]]], dtype=np.float32) / np.float32(255)
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), expected)
    # with a transparent index (a tRNS chunk), the colours stay and alpha is dropped
    palette.save(tmp_path / "p_trns.png", transparency=0)
    with Image.open(tmp_path / "p_trns.png") as img:
        assert img.mode == "P" and "transparency" in img.info
    np.testing.assert_array_equal(read_image(tmp_path / "p_trns.png"), expected)


# ------------------------------------------------------- 2. missing Pillow


def _run_without_pillow(*commands):
    """Run ``main`` on each argument list in a fresh process where Pillow cannot be
    imported (so matplotlib's own import of Pillow fails too); return the results."""
    code = ("import json, sys\n"
            "sys.modules['PIL'] = None\n"
            "from skbilrp.cli import main\n"
            f"for argv in {[list(c) for c in commands]!r}:\n"
            "    rc = main(argv)\n"
            "    print(rc, file=sys.stderr, flush=True)\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(skbilrp.__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_missing_pillow_is_named_not_reported_as_missing_matplotlib(tmp_path, two_pngs):
    err = _run_without_pillow(["explain", *two_pngs, "-o", str(tmp_path / "o.png")],
                              ["demo", "--output", str(tmp_path / "demo")])
    chunks = err.strip().split("\n")
    # each command: one error line, then its exit status
    assert len(chunks) == 4, err
    for line, rc in zip(chunks[0::2], chunks[1::2]):
        assert rc == "2", err
        _single_error_line(line, "Pillow", 'pip install "skbilrp[images]"')
        assert "install it with: pip install \"skbilrp[plot]\"" not in line
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "demo").exists()


# ------------------------------------------------------- 3. bad weights files


class Opaque:
    """A class torch.load(weights_only=True) refuses to unpickle."""


def _vgg_features():
    from skbilrp.models import vgg16

    return {k: v for k, v in vgg16(seed=1).state_dict().items() if k.startswith("features.")}


def _write_weights(kind, path):
    if kind == "text":
        path.write_text("these are not weights\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "tensor":
        torch.save(torch.zeros(3, 3), path)
    elif kind == "wrong_keys":
        torch.save({"conv.weight": torch.zeros(3), "conv.bias": torch.zeros(3)}, path)
    elif kind == "missing_entries":
        state = _vgg_features()
        torch.save({k: v for k, v in list(state.items())[:4]}, path)
    elif kind == "wrong_shape":
        state = _vgg_features()
        state["features.0.weight"] = torch.zeros(64, 3, 5, 5)
        torch.save(state, path)
    elif kind == "not_a_tensor":
        state = _vgg_features()
        state["features.2.bias"] = [0.0] * 64
        torch.save(state, path)
    elif kind == "refused_object":
        torch.save({"features.0.weight": Opaque()}, path)
    elif kind == "plain_pickle":
        with open(path, "wb") as f:
            pickle.dump(collections.Counter(a=1), f, protocol=4)
    elif kind == "truncated":
        torch.save(_vgg_features(), path)
        path.write_bytes(path.read_bytes()[:300])
    return str(path)


WEIGHT_CASES = ["text", "empty", "tensor", "wrong_keys", "missing_entries", "wrong_shape", "not_a_tensor",
                "refused_object", "plain_pickle", "truncated"]


@pytest.mark.parametrize("kind", WEIGHT_CASES)
def test_bad_weights_file_is_one_line_and_exit_2(kind, tmp_path, two_pngs, capsys):
    weights = _write_weights(kind, tmp_path / f"{kind}.pth")
    out = tmp_path / "o.png"
    assert main(["explain", *two_pngs, "--model", "vgg16", "--weights", weights, "--size", "32",
                 "-o", str(out)]) == 2
    # the file, what is wrong with it, and what to give instead
    _single_error_line(capsys.readouterr().err, f"{kind}.pth", "--weights", "VGG-16 state_dict")
    assert not out.exists()


def test_bad_weights_folder_and_real_process(tmp_path, two_pngs, capsys):
    assert main(["explain", *two_pngs, "--model", "vgg16", "--weights", str(tmp_path)]) == 2
    _single_error_line(capsys.readouterr().err, "is a folder, not a weights file")
    # a real process: torch's own warnings must not add lines to stderr either
    weights = _write_weights("plain_pickle", tmp_path / "plain_pickle.pth")
    proc = subprocess.run([sys.executable, "-m", "skbilrp", "explain", *two_pngs, "--model", "vgg16",
                           "--weights", weights, "--size", "32"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    _single_error_line(proc.stderr, "plain_pickle.pth", "weights_only=True")


# ------------------------------------------------------------ 4. memory limit


class _WorkStarted(Exception):
    pass


def _no_work(*args, **kwargs):
    raise _WorkStarted("images were loaded or a model was built: the size was not checked first")


@pytest.fixture
def no_work(monkeypatch):
    """Make loading an image or building the explainer fail at once (and safely: the old
    code would otherwise try to allocate ~120 GB for --size 100000)."""
    import skbilrp.explainer
    import skbilrp.io

    monkeypatch.setattr(skbilrp.io, "load_image", _no_work)
    monkeypatch.setattr(skbilrp.io, "resize_center_crop", _no_work)
    monkeypatch.setattr(skbilrp.explainer, "Explainer", _no_work)
    # a fixed limit, so the suggested size does not depend on this machine
    monkeypatch.setattr("skbilrp.cli._memory_limit", lambda: (4 * 2**30, "test limit"), raising=False)


@pytest.mark.parametrize("model", ["mobilenet_v2", "vgg16"])
def test_huge_size_is_refused_before_any_work(model, two_pngs, tmp_path, no_work, capsys):
    weights = []
    if model == "vgg16":
        weights = ["--weights", _write_weights("missing_entries", tmp_path / "w.pth")]
    # no_work makes any image loading or explainer building raise: nothing started
    assert main(["explain", *two_pngs, "--model", model, *weights, "--size", "100000"]) == 2
    line = _single_error_line(capsys.readouterr().err, "--size 100000", "4 GiB", "test limit", "pass --size")
    suggested = int(line.split("pass --size ")[1].split()[0])
    from skbilrp.cli import explain_memory

    estimate = explain_memory(model, 16)
    # the suggestion is the largest size whose estimate fits the limit
    assert 0 < suggested < 100000
    assert estimate(suggested) <= 4 * 2**30 < estimate(suggested + 1)
    assert estimate(100000) > 1000 * 2**30
    # the default size fits and goes on to the work (with weights that load: a bad weights file is
    # refused before any image is read, like every other check)
    if model == "vgg16":
        torch.save(_vgg_features(), tmp_path / "good.pth")
        weights = ["--weights", str(tmp_path / "good.pth")]
    with pytest.raises(_WorkStarted):
        main(["explain", *two_pngs, "--model", model, *weights, "--size", "224"])


def test_memory_estimate_grows_with_size_and_shrinks_with_patch():
    from skbilrp.cli import explain_memory

    fine, coarse = explain_memory("mobilenet_v2", 8), explain_memory("mobilenet_v2", 32)
    sizes = [32, 64, 224, 500, 1024, 4096]
    assert all(fine(a) <= fine(b) for a, b in zip(sizes, sizes[1:]))
    assert all(coarse(s) <= fine(s) for s in sizes)


def test_vgg16_checks_a_state_dict_given_from_python():
    from skbilrp.models import vgg16

    state = _vgg_features()
    state["features.0.weight"] = torch.zeros(64, 3, 5, 5)
    with pytest.raises(ValueError, match=r"'features.0.weight' has shape \(64, 3, 5, 5\).*\(64, 3, 3, 3\)"):
        vgg16(weights=state)
    with pytest.raises(ValueError, match=r"26 convolution entries .* missing, e.g. 'features.0.weight'"):
        vgg16(weights={"classifier.0.weight": torch.zeros(1)})
