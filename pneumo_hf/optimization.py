"""What learns, and how fast: the training loss (class-weighted cross-entropy, cross-entropy or focal), the parameter
groups with timm's layer-wise learning-rate decay, a frozen backbone for the first epochs, and the lower layers frozen.

    criterion = make_loss("weighted_ce", class_weights(train_set["label"]))
    optimizer = torch.optim.AdamW(parameter_groups(classifier, layer_decay=0.75, learning_rate=1e-3), lr=1e-3)
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.nn.functional as F
from timm.models import group_parameters
from timm.optim import param_groups_layer_decay
from torch import nn

from .models import ModelError, PneumoniaClassifier, head_of

logger = logging.getLogger(__name__)

__all__ = ["freeze_backbone", "freeze_lower_layers", "make_loss", "parameter_groups"]


def make_loss(kind: str, weights: torch.Tensor, label_smoothing: float = 0.0, gamma: float = 2.0):
    """The training loss: class-weighted cross-entropy, plain cross-entropy, or class-weighted focal loss."""
    if kind == "ce":
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    if kind == "weighted_ce":
        return nn.CrossEntropyLoss(weight=weights, label_smoothing=label_smoothing)

    def focal(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weighted = F.cross_entropy(logits, labels, weight=weights.to(logits.device), reduction="none", label_smoothing=label_smoothing)
        p_true = torch.exp(-F.cross_entropy(logits, labels, reduction="none"))
        return ((1.0 - p_true) ** gamma * weighted).mean()

    return focal


def parameter_groups(classifier: PneumoniaClassifier, layer_decay: Optional[float] = None, weight_decay: float = 0.0, learning_rate: float = 1e-3) -> list:
    """All parameters in one group, or with `layer_decay` timm's layer-wise groups, their learning rates scaled
    (get_cosine_schedule_with_warmup then scales each group's own rate)."""
    if layer_decay is None:
        return [{"params": list(classifier.parameters())}]
    groups = param_groups_layer_decay(classifier.backbone, weight_decay=weight_decay, layer_decay=layer_decay)
    for group in groups:
        group["lr"] = learning_rate * group["lr_scale"]
    logger.info("Layer decay %g: %d parameter groups, learning-rate scales %.3g to %.3g.", layer_decay, len(groups), min(g["lr_scale"] for g in groups), max(g["lr_scale"] for g in groups))
    return groups


def freeze_backbone(classifier: PneumoniaClassifier, frozen: bool) -> None:
    """With `frozen`, only the head has gradients and the rest is in eval mode (BatchNorm statistics and weights stay
    the checkpoint's, bit for bit); else every parameter trains. Called after `model.train()`."""
    head = head_of(classifier)
    head_parameters = {id(parameter) for parameter in head.parameters()}
    for parameter in classifier.parameters():
        parameter.requires_grad_(not frozen or id(parameter) in head_parameters)
    if frozen:
        classifier.backbone.eval()
        head.train()


def freeze_lower_layers(classifier: PneumoniaClassifier, trainable_layers: int) -> None:
    """Only the top `trainable_layers` of timm's layer grouping (`group_matcher`, as `param_groups_layer_decay` numbers
    them; parameters it leaves out count as the top layer, with the head) have gradients; the modules below are in
    eval mode, and every batch norm keeps the checkpoint's statistics. Called after `model.train()`."""
    backbone = classifier.backbone
    group_matcher = classifier.adapter.layer_groups()
    if group_matcher is None:
        raise ModelError(f"{classifier.architecture} has no timm layer grouping to count layers in; drop --trainable_layers.")
    layer_of = group_parameters(backbone, group_matcher(coarse=False), reverse=True)
    top = max(layer_of.values())
    for name, parameter in backbone.named_parameters():
        parameter.requires_grad_(layer_of.get(name, top) > top - trainable_layers)
    for module in backbone.modules():
        own = list(module.parameters(recurse=False))
        if isinstance(module, nn.BatchNorm2d) or (own and not any(parameter.requires_grad for parameter in own)):
            module.eval()
