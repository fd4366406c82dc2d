"""Batch norms folded into the convolutions before them, for inference: the same outputs, less CPU.

    from pneumo_hf.folding import fold_batch_norms
    fold_batch_norms(model.eval(), torch.rand(1, 3, 224, 224))   # EfficientNet-Lite0: a fifth less time a film

A norm is folded when it is the next sibling of a convolution and, in one forward pass on `example`, takes that
convolution's output as its input; torch's `fuse_conv_bn_eval` moves its scale and shift into a copy of the
convolution, and the norm keeps only what comes after it (timm's `BatchNormAct2d`: dropout and activation). The
model's output on `example` is compared before and after, and every fold undone when they differ.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import pairwise

import torch
from timm.layers import BatchNormAct2d
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["fold_batch_norms"]

logger = logging.getLogger(__name__)


@dataclass
class _Pair:
    parent: nn.Module
    conv_name: str
    norm_name: str
    conv: nn.Conv2d
    norm: nn.BatchNorm2d


def fold_batch_norms(model: nn.Module, example: torch.Tensor, atol: float = 1e-4) -> int:
    """Fold every foldable norm of an eval-mode `model` in place; returns how many were folded (0 when the
    output on `example` moved by more than `atol` relative to its largest value, and nothing was changed)."""
    if model.training:
        raise ValueError("Batch norms fold only into a model in eval mode (model.eval()).")
    pairs = _adjacent_pairs(model)
    if not pairs:
        return 0
    with torch.inference_mode():
        fed, before = _fed_by_their_convolution(model, pairs, example)
        if not fed:
            return 0
        for pair in fed:
            setattr(pair.parent, pair.conv_name, fuse_conv_bn_eval(pair.conv, pair.norm))
            setattr(pair.parent, pair.norm_name, nn.Sequential(pair.norm.drop, pair.norm.act) if isinstance(pair.norm, BatchNormAct2d) else nn.Identity())
        after = model(example)
    if torch.allclose(after, before, rtol=0.0, atol=atol * before.abs().max().item()):
        return len(fed)
    for pair in fed:
        setattr(pair.parent, pair.conv_name, pair.conv)
        setattr(pair.parent, pair.norm_name, pair.norm)
    logger.warning("Folding the batch norms of %s changed its output; it runs unfolded.", type(model).__name__)
    return 0


def _adjacent_pairs(model: nn.Module) -> list[_Pair]:
    """Each convolution directly followed, among its parent's children, by a batch norm of as many channels."""
    pairs = []
    for parent in model.modules():
        children = list(parent.named_children())
        for (conv_name, conv), (norm_name, norm) in pairwise(children):
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats and norm.num_features == conv.out_channels:
                pairs.append(_Pair(parent, conv_name, norm_name, conv, norm))
    return pairs


def _fed_by_their_convolution(model: nn.Module, pairs: list[_Pair], example: torch.Tensor) -> tuple[list[_Pair], torch.Tensor]:
    """The pairs whose norm, in a forward pass on `example`, received exactly the tensor its convolution returned, and
    that pass's output (the unfolded model's, to compare the folded one with)."""
    outputs, fed = {}, set()
    hooks = []
    for index, pair in enumerate(pairs):
        hooks.append(pair.conv.register_forward_hook(lambda module, inputs, output, index=index: outputs.__setitem__(index, output)))
        hooks.append(pair.norm.register_forward_pre_hook(lambda module, inputs, index=index: fed.add(index) if inputs[0] is outputs.get(index) else None))
    try:
        output = model(example)
    finally:
        for hook in hooks:
            hook.remove()
    return [pair for index, pair in enumerate(pairs) if index in fed], output
