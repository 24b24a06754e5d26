"""Canonisation: a frozen copy of the user's model in the form LRP rules expect.

The user's model is never touched: skbilrp works on a deep copy, in eval mode, with
gradients switched off, and with every BatchNorm that directly follows a conv or
linear layer folded into that layer (LRP rules are defined for ``z = W a + b``).
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import fx, nn

from .operators import registered_module_types

__all__ = ["canonize", "trace", "UnsupportedModelError"]


class UnsupportedModelError(TypeError):
    """The model contains a module or operation skbilrp has no relevance rule for."""


def canonize(model: nn.Module, dtype: Optional[torch.dtype] = None) -> tuple[nn.Module, fx.GraphModule]:
    """Copy ``model``, freeze it, fold BatchNorms, and trace it.

    Parameters
    ----------
    model : nn.Module
        The user's feature extractor; left unchanged.
    dtype : torch.dtype, optional
        Convert the copy to this floating dtype (e.g. ``torch.float64`` for tests).

    Returns
    -------
    copy : nn.Module
        The canonised copy (BatchNorms folded ones replaced by ``nn.Identity``). A
        model that is itself one registered layer (e.g. a bare ``nn.Linear``) is
        wrapped as child ``"0"`` of an ``nn.Sequential``.
    graph : torch.fx.GraphModule
        Its traced graph; registered module types are single nodes.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    frozen = copy.deepcopy(model).eval()
    if isinstance(frozen, registered_module_types()):
        # a root module is traced into; as a child it stays one node with its operator
        frozen = nn.Sequential(frozen)
    if dtype is not None:
        frozen = frozen.to(dtype)
    for p in frozen.parameters():
        p.requires_grad_(False)
    graph = trace(frozen)
    if _fold_batchnorms(frozen, graph):
        graph = trace(frozen)
    _drop_identities(graph)
    return frozen, graph


def _drop_identities(graph: fx.GraphModule) -> None:
    """Remove ``nn.Identity`` nodes (folded BatchNorms leave them between a conv and its
    activation), so that each activation's ratio can be fused into its layer."""
    modules = dict(graph.named_modules())
    for node in list(graph.graph.nodes):
        if node.op == "call_module" and type(modules.get(node.target)) is nn.Identity and node.args:
            node.replace_all_uses_with(node.args[0])
            graph.graph.erase_node(node)
    graph.recompile()


class _Tracer(fx.Tracer):
    """Keeps modules with a relevance operator (and all torch.nn built-ins) as leaves,
    and names the module whose forward could not be traced."""

    def __init__(self) -> None:
        super().__init__()
        self._known = registered_module_types()

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            return False
        return isinstance(m, self._known) or super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):  # type: ignore[override]
        try:
            return super().call_module(m, forward, args, kwargs)
        except UnsupportedModelError:
            raise
        except Exception as err:
            path = self.path_of_module(m) or "<model>"
            raise UnsupportedModelError(
                f"Cannot trace module {path!r} ({type(m).__name__}): {err}. Data-dependent "
                "control flow cannot be traced; register a relevance operator for this "
                "type with skbilrp.operators.register_operator so it is used as one node."
            ) from err


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model`` with skbilrp's leaf rules."""
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except UnsupportedModelError:
        raise
    except Exception as err:
        raise UnsupportedModelError(
            f"Cannot trace {type(model).__name__}: {err}. Data-dependent control flow "
            "cannot be traced; register a relevance operator for the module that holds it "
            "with skbilrp.operators.register_operator."
        ) from err
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)


def _fold_batchnorms(model: nn.Module, graph: fx.GraphModule) -> bool:
    """Fold each BatchNorm fed only by a conv/linear layer into that layer, in place."""
    modules = dict(model.named_modules())
    folded = False
    for node in graph.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.modules.batchnorm._BatchNorm):
            continue
        src = node.args[0]
        if not (isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1):
            continue
        layer = modules[src.target]
        if not isinstance(layer, _FOLDABLE):
            continue
        bn = modules[node.target]
        _fold(layer, bn)
        parent_name, _, child = node.target.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, nn.Identity())
        folded = True
    return folded


@torch.no_grad()
def _fold(layer: nn.Module, bn: nn.Module) -> None:
    std = torch.sqrt(bn.running_var + bn.eps)
    scale = bn.weight / std if bn.affine else 1 / std
    shift = (bn.bias if bn.affine else 0) - bn.running_mean * scale
    shape = (-1,) + (1,) * (layer.weight.dim() - 1)
    layer.weight.mul_(scale.reshape(shape))
    bias = layer.bias if layer.bias is not None else torch.zeros_like(shift)
    layer.bias = nn.Parameter(bias * scale + shift, requires_grad=False)
