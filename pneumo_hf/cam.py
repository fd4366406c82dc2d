"""Heatmaps for PNEUMONIA: the class activation map in the prediction's own forward pass where the maths
allows (a CNN whose head is global average pooling then one linear layer), else Grad-CAM through
pytorch-grad-cam with the target layer and reshape transform chosen per model family. An ensemble's map is the whole
ensemble's evidence: each member's map in logit units (its CAM, or HiResCAM at a Keras CNN's last ReLU) weighted as
the ensemble averages the members' logits (docs/heatmap.md measures it against the others).

    from pneumo_hf.cam import HeatmapMaker, overlay
    maker = HeatmapMaker(classifier)
    maps, logits = maker(pixel_values, views=("hflip",))   # float32 (batch, H, W) in [0, 1], logits averaged over views
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import scale_cam_image, show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from .ensemble import Ensemble
from .keras_cnn import KerasCNN
from .labels import LABEL2ID, POSITIVE_LABEL
from .models import PneumoniaClassifier
from .tta import mean_over_views, with_views

__all__ = ["HeatmapMaker", "class_activation_head", "ensemble_evidence", "grad_cam_scaled", "member_evidence", "overlay", "target_layers"]

ReshapeTransform = Optional[Callable[[torch.Tensor], torch.Tensor]]
POSITIVE_ID = LABEL2ID[POSITIVE_LABEL]


def target_layers(classifier: PneumoniaClassifier) -> tuple[list[nn.Module], ReshapeTransform]:
    """The layer Grad-CAM reads for each family (a CNN's last feature map, after its activation), and
    for transformers the token → grid reshape."""
    backbone = classifier.backbone
    if classifier.family == "transformers":
        config = backbone.config
        base = getattr(backbone, config.model_type)
        if not hasattr(config, "patch_size"):  # a transformers CNN (ResNet, ConvNeXt): its last stage's feature map
            return [base.encoder.stages[-1]], None
        layers = base.layers if hasattr(base, "layers") else base.encoder.layer  # transformers 5 / 4 layout
        grid = config.image_size // config.patch_size
        return [layers[-1].layernorm_before], _tokens_to_grid(grid, grid, prefix_tokens=1)
    if hasattr(backbone, "blocks") and hasattr(backbone, "patch_embed"):  # timm ViT / DeiT
        grid_h, grid_w = backbone.patch_embed.grid_size
        return [backbone.blocks[-1].norm1], _tokens_to_grid(grid_h, grid_w, getattr(backbone, "num_prefix_tokens", 1))
    if isinstance(backbone, Ensemble):  # each member's map, averaged by grad-cam
        return [_cnn_layer(member) for member in backbone.members], None
    return [_cnn_layer(backbone)], None


def _cnn_layer(backbone: nn.Module) -> nn.Module:
    """A timm CNN's last feature map, after its activation."""
    if hasattr(backbone, "layer4"):  # timm ResNet family
        return backbone.layer4[-1]
    if hasattr(backbone, "conv_head") and hasattr(backbone, "bn2"):  # timm EfficientNet / MobileNet: bn2 holds the activation
        return backbone.bn2
    return backbone.get_submodule(backbone.feature_info[-1]["module"])  # any other timm CNN: its last feature stage


def _tokens_to_grid(height: int, width: int, prefix_tokens: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        grid = tokens[:, prefix_tokens:, :].reshape(tokens.size(0), height, width, tokens.size(2))
        return grid.permute(0, 3, 1, 2)

    return reshape


def class_activation_head(classifier: PneumoniaClassifier) -> Optional[nn.Linear]:
    """The linear head of a timm CNN whose `forward_head` is global average pooling then that layer, else None.
    For such a head Grad-CAM at the last feature map is the class activation map (the head's row / (H·W)).
    Checked on the module itself, so a head with a norm or an MLP after the pooling falls back to Grad-CAM."""
    return _pooling_head(classifier.backbone) if classifier.family == "timm" else None


def _pooling_head(backbone: nn.Module) -> Optional[nn.Linear]:
    if not hasattr(backbone, "forward_head") or hasattr(backbone, "patch_embed"):
        return None
    head = backbone.get_classifier()
    if not isinstance(head, nn.Linear):
        return None
    features = torch.randn(2, head.in_features, 3, 2, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        try:
            same = torch.allclose(backbone.forward_head(features), head(features.mean(dim=(2, 3))), atol=1e-5)
        except RuntimeError:  # a head fixed to one feature-map size (flatten + dense) is no pooling head
            return None
    return head if same else None


class HeatmapMaker:
    """Heatmaps for the classifier's PNEUMONIA output; call it on a normalised batch."""

    def __init__(self, classifier: PneumoniaClassifier):
        self.classifier = classifier
        self.head = class_activation_head(classifier)
        self.layers, self.reshape = target_layers(classifier)
        self._grad_cam_lock = threading.Lock()
        # each ensemble member's pooling head (or None), found once: the check runs a small forward pass
        self.pooling_heads = {id(member): _pooling_head(member) for member in _leaves(classifier.backbone)} if isinstance(classifier.backbone, Ensemble) else {}  # grad-cam's hooks hold per-call state on the shared model

    def __call__(self, pixel_values: torch.Tensor, views: Sequence[str] = ()) -> tuple[np.ndarray, torch.Tensor]:
        """Heatmaps (batch, H, W) in [0, 1] of the images themselves, and their logits averaged over
        the images and their test-time `views`."""
        if self.head is not None:
            return self._class_activation_maps(pixel_values, views)
        if isinstance(self.classifier.backbone, Ensemble):
            return self._ensemble_evidence_maps(pixel_values, views)
        maps, logits = self.grad_cam(pixel_values)
        if views:
            with torch.inference_mode():
                view_logits = self.classifier(with_views(pixel_values, views)[len(pixel_values) :])
            logits = mean_over_views(torch.cat([logits, view_logits]), len(pixel_values))
        return maps, logits

    def _class_activation_maps(self, pixel_values: torch.Tensor, views: Sequence[str]) -> tuple[np.ndarray, torch.Tensor]:
        """One forward pass for the images and their views; the maps come from its last feature map."""
        backbone = self.classifier.backbone
        with torch.inference_mode():
            features = backbone.forward_features(with_views(pixel_values, views))
            logits = mean_over_views(backbone.forward_head(features), len(pixel_values))
            own = features[: len(pixel_values)].float()
            cams = torch.einsum("bkhw,k->bhw", own, self.head.weight[POSITIVE_ID].float()) / (own.shape[-2] * own.shape[-1])
        return grad_cam_scaled(cams.clamp(min=0).cpu().numpy(), pixel_values), logits

    def _ensemble_evidence_maps(self, pixel_values: torch.Tensor, views: Sequence[str]) -> tuple[np.ndarray, torch.Tensor]:
        """The ensemble's forward pass (as `Ensemble.forward`, with the views in the batch) and the whole ensemble's
        evidence for PNEUMONIA: each member's map in logit units (`member_evidence`), weighted as the ensemble weighs
        its logits (1 / (members · temperature), nested ensembles likewise), summed at the input's size; then the
        positive part, scaled to [0, 1] per film."""
        count = len(pixel_values)  # no lock: no hooks, and autograd.grad leaves the shared parameters' .grad alone
        logits, evidence = ensemble_evidence(self.classifier.backbone, with_views(pixel_values, views), count, tuple(pixel_values.shape[-2:]), self.pooling_heads)
        return _unit_scaled(evidence.clamp(min=0).numpy()), mean_over_views(logits, count)

    def grad_cam(self, pixel_values: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        """pytorch-grad-cam at `target_layers`: heatmaps and the logits of its forward pass."""
        # grad-cam's hooks keep the activations of every forward pass, so they live only for this call
        # (released by hand: its context manager swallows IndexError).
        with self._grad_cam_lock:
            cam = GradCAM(model=self.classifier, target_layers=self.layers, reshape_transform=self.reshape)
            try:
                maps = cam(input_tensor=pixel_values, targets=[ClassifierOutputTarget(POSITIVE_ID)] * len(pixel_values))
                logits = cam.outputs.detach()
            finally:
                cam.activations_and_grads.release()
        return np.clip(np.nan_to_num(maps), 0.0, 1.0).astype(np.float32), logits


def ensemble_evidence(ensemble: Ensemble, batch: torch.Tensor, count: int, size: tuple[int, int], pooling_heads: Optional[dict] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits of the whole batch as `Ensemble.forward` gives them, the evidence maps of its first `count` films at
    `size` in logit units): the members' `member_evidence` weighted as their logits are averaged. `pooling_heads`: the
    members' pooling heads by `id`, as `HeatmapMaker` finds them once (else found here)."""
    pooling_heads = pooling_heads if pooling_heads is not None else {id(member): _pooling_head(member) for member in _leaves(ensemble)}
    logits, evidence = [], torch.zeros(count, *size)
    for member, spec, inputs in zip(ensemble.members, ensemble.specs, ensemble.member_inputs(batch), strict=True):
        weight = 1.0 / (len(ensemble.members) * spec["temperature"])
        if isinstance(member, Ensemble):
            member_logits, member_map = ensemble_evidence(member, inputs, count, size, pooling_heads)
        else:
            member_logits, member_map = member_evidence(member, inputs, count, pooling_heads[id(member)])
            member_map = F.interpolate(member_map[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        logits.append(member_logits * weight * len(ensemble.members))
        evidence += weight * member_map
    return torch.stack(logits).mean(dim=0), evidence


def member_evidence(member: nn.Module, batch: torch.Tensor, count: int, pooling_head: Optional[nn.Linear] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits of the batch, the first `count` films' evidence map for the PNEUMONIA − NORMAL logit at the member's last
    feature map, in logit units, before any ReLU). A CNN whose head is average pooling then a linear layer: its class
    activation map, exact, from the forward pass alone. The Keras CNN: HiResCAM (gradient × activation, summed over
    channels) at its last ReLU, one backward pass; for its dense head that is the first-order share of the logit.
    `pooling_head`: the member's, when the caller has found it (`_pooling_head`)."""
    head = pooling_head if pooling_head is not None else _pooling_head(member)
    if head is not None:
        with torch.inference_mode():
            features = member.forward_features(batch)
            logits = member.forward_head(features)
            own = features[:count].float()
            direction = (head.weight[POSITIVE_ID] - head.weight[1 - POSITIVE_ID]).float()
            return logits, torch.einsum("bkhw,k->bhw", own, direction) / (own.shape[-2] * own.shape[-1])
    if isinstance(member, KerasCNN):
        with torch.enable_grad():
            *early, last = member.blocks
            convolved = last[0](nn.Sequential(*early)(batch) if early else batch)
            activation = torch.relu(convolved)
            logits = member.forward_head(last[2](activation))
            margin = logits[:count, POSITIVE_ID] - logits[:count, 1 - POSITIVE_ID]
            gradient, = torch.autograd.grad(margin.sum(), activation)
            return logits.detach(), (gradient[:count] * activation[:count]).sum(dim=1).detach()
    raise ValueError(f"No evidence map for an ensemble member of type {type(member).__name__}: a pooling-head CNN or keras_cnn.")


def _leaves(ensemble: Ensemble) -> list[nn.Module]:
    """The members of an ensemble that are not ensembles themselves, nested ones opened."""
    return [leaf for member in ensemble.members for leaf in (_leaves(member) if isinstance(member, Ensemble) else [member])]


def _unit_scaled(maps: np.ndarray) -> np.ndarray:
    """Each map divided by its maximum (0 stays 0): [0, 1] with the strongest evidence at 1."""
    peaks = maps.reshape(len(maps), -1).max(axis=1).reshape(-1, 1, 1)
    return np.divide(maps, peaks, out=np.zeros_like(maps), where=peaks > 0).astype(np.float32)


def grad_cam_scaled(cams: np.ndarray, pixel_values: torch.Tensor) -> np.ndarray:
    """grad-cam's own post-processing of one layer's maps: min-max per map, resized to the input, then again."""
    size = (pixel_values.shape[-1], pixel_values.shape[-2])
    maps = np.maximum(scale_cam_image(cams, size), 0)
    return np.clip(np.nan_to_num(scale_cam_image(maps)), 0.0, 1.0).astype(np.float32)


def overlay(image: Image.Image, heatmap: np.ndarray, image_weight: float = 0.6) -> Image.Image:
    """The heatmap (same size as `image`) blended over the image with a jet colour map."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return Image.fromarray(show_cam_on_image(rgb, heatmap, use_rgb=True, image_weight=image_weight))
