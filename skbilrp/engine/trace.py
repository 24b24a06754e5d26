"""torch.export to functional ATen; the module path of each node.

``export(model, args, kwargs)`` runs ``torch.export.export(strict=False)`` then
``run_decompositions({})``, which functionalises in-place ops (``silu_`` → ``silu``)
and keeps ``aten.detach.default`` nodes (checked in tests/engine): a detached tensor
carries no relevance. The batch size is part of the exported shapes; the network
re-exports per input shape and caches the graphs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import fx, nn

__all__ = ["Traced", "export", "module_of"]


class UnsupportedModelError(TypeError):
    """The model cannot be traced, or has an op without a relevance operator."""


@dataclass
class Traced:
    graph: fx.Graph
    #: placeholder name -> tensor, for parameters, buffers and lifted constants
    constants: dict[str, torch.Tensor]
    #: user-input placeholder names, in order (first: the explained input)
    inputs: list[str]
    #: names of the keyword user inputs
    input_names: list[str]


def export(model: nn.Module, args: tuple, kwargs: dict) -> Traced:
    """Export ``model`` to functional ATen (one graph for these input shapes)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ep = torch.export.export(model, args, kwargs, strict=False)
            ep = ep.run_decompositions({})
    except Exception as err:  # torch.export raises many types
        _raise_if_input_does_not_fit(model, args, kwargs)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsupportedModelError(
            f"Cannot export {type(model).__name__} with torch.export: {first} skbilrp needs a "
            "model torch.export can trace: no data-dependent control flow, no mutation of "
            "captured tensors (torch.export.export(model, args, strict=False) must succeed)."
        ) from err
    sig = ep.graph_signature
    state = dict(ep.state_dict)
    lookup: dict[str, torch.Tensor] = {}
    for ph, target in sig.inputs_to_parameters.items():
        lookup[ph] = state[target]
    for ph, target in sig.inputs_to_buffers.items():
        lookup[ph] = state[target] if target in state else ep.constants[target]
    for ph, target in sig.inputs_to_lifted_tensor_constants.items():
        lookup[ph] = ep.constants[target]
    user = list(sig.user_inputs)
    return Traced(ep.graph, lookup, user, user)


def _raise_if_input_does_not_fit(model: nn.Module, args: tuple, kwargs: dict) -> None:
    """Tell a bad input (the model's own forward fails) from an untraceable model."""
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    except (RuntimeError, IndexError, ValueError):
        raise
    except Exception:  # noqa: BLE001 - any other failure is the export's to report
        return


def module_of(node: fx.Node) -> tuple[str, str]:
    """``(path, class name)`` of the innermost module a node came from ("" for the root)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", "<model>"
    path, cls = list(stack.values())[-1]
    name = cls if isinstance(cls, str) else getattr(cls, "__qualname__", str(cls))
    return path, name.rpartition(".")[2] if "." in name else name


def module_paths(node: fx.Node) -> list[str]:
    """Paths of all modules enclosing ``node``, outermost first."""
    return [p for p, _ in (node.meta.get("nn_module_stack") or {}).values()]
