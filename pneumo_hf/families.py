"""One adapter per model family: what the rest of the house asks of a backbone (its logits, head, pooling head, first
convolution, pooled features, Grad-CAM layers, layer groups, how it is saved), answered in one place, as timm keeps
its per-architecture answers in its models' own methods. No module outside this one asks which family it holds.

    family = family_of(classifier.backbone)        # TimmCNN, KerasCNNFamily, TimmViT, Transformers or EnsembleOf
    family.first_convolution(), family.pooling_head, family.cam_layers(), family.evidence(batch, count), family.members
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .labels import LABEL2ID, POSITIVE_LABEL

__all__ = ["EnsembleOf", "Family", "KerasCNNFamily", "TimmCNN", "TimmViT", "Transformers", "family_of"]

ReshapeTransform = Optional[Callable[[torch.Tensor], torch.Tensor]]
POSITIVE_ID = LABEL2ID[POSITIVE_LABEL]


class Family:
    """The questions; each family answers those it can (None where it has no such part)."""

    name = ""  # as the model folder's training_summary.json records it: "timm" or "transformers"
    is_cnn = False  # channels-last memory and batch-norm folding pay off
    members: tuple[Family, ...] = ()  # an ensemble's members' adapters, in order

    def __init__(self, backbone: nn.Module):
        self.backbone = backbone

    @property
    def architecture(self) -> str:
        raise NotImplementedError

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.backbone(pixel_values)

    def head(self) -> Optional[nn.Module]:
        """The two-class head that replaced the checkpoint's."""
        return None

    @property
    def pooling_head(self) -> Optional[nn.Linear]:
        """The linear head of a CNN whose head is global average pooling then that layer (its map is a class
        activation map), else None."""
        return None

    def evidence(self, batch: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits of the batch, the first `count` films' evidence map for the PNEUMONIA − NORMAL logit at the last
        feature map, in logit units, before any ReLU): what an ensemble member adds to the ensemble's heatmap."""
        raise ValueError(f"No evidence map for an ensemble member of type {type(self.backbone).__name__}: a pooling-head CNN or keras_cnn.")

    def first_convolution(self) -> Optional[nn.Conv2d]:
        return next((module for module in self.backbone.modules() if isinstance(module, nn.Conv2d)), None)

    def embedding_model(self) -> Optional[nn.Module]:
        """The timm model whose pooled embedding (`forward_head(..., pre_logits=True)`) a pooled domain check or a
        linear probe reads, fed this model's input; None when there is none."""
        return None

    def cam_layers(self) -> tuple[list[nn.Module], ReshapeTransform]:
        """The layers Grad-CAM reads (a CNN's last feature map, after its activation) and a token → grid reshape."""
        raise NotImplementedError

    def layer_groups(self) -> Optional[Callable[..., Any]]:
        """timm's `group_matcher` (for layer-wise decay and freezing lower layers), or None."""
        return None

    def save(self, backbone: nn.Module, folder: Path, extras: dict[str, Any], data_config: dict[str, Any], label_names: list[str]) -> None:
        """Write config.json + model.safetensors of `backbone` (this family's, perhaps rounded) in the family's own Hub
        format, with `extras` (threshold, temperature...) in config.json."""
        raise NotImplementedError


class _Timm(Family):
    name = "timm"

    @property
    def architecture(self) -> str:
        return self.backbone.pretrained_cfg["architecture"]

    def head(self) -> Optional[nn.Module]:
        return self.backbone.get_classifier()

    def first_convolution(self) -> Optional[nn.Conv2d]:
        name = self.backbone.pretrained_cfg.get("first_conv")
        module = self.backbone.get_submodule(name) if name else None
        return module if isinstance(module, nn.Conv2d) else None

    def embedding_model(self) -> Optional[nn.Module]:
        return self.backbone if hasattr(self.backbone, "forward_head") else None

    def layer_groups(self) -> Optional[Callable[..., Any]]:
        return getattr(self.backbone, "group_matcher", None)

    def save(self, backbone: nn.Module, folder: Path, extras: dict[str, Any], data_config: dict[str, Any], label_names: list[str]) -> None:
        import timm

        from .folder import CONFIG, ModelFolder

        config = {key: data_config[key] for key in ("input_size", "mean", "std", "interpolation")}
        timm.models.save_for_hf(backbone, folder, model_config={"label_names": label_names, **extras}, data_config=config, safe_serialization=True)
        # transformers' TimmWrapper passes num_classes itself and fails when model_args repeats it; timm reads it from
        # the top-level `num_classes` as well, so the copy in model_args is redundant
        model_folder = ModelFolder(folder)
        stored = model_folder.read(CONFIG)
        stored.get("model_args", {}).pop("num_classes", None)
        model_folder.write(CONFIG, stored)


class TimmCNN(_Timm):
    """A timm CNN (ResNet, EfficientNet, the Keras CNN...)."""

    is_cnn = True

    @cached_property
    def pooling_head(self) -> Optional[nn.Linear]:  # found once: the check runs a small forward pass
        backbone = self.backbone
        head = backbone.get_classifier() if hasattr(backbone, "forward_head") else None
        if not isinstance(head, nn.Linear):
            return None
        features = torch.randn(2, head.in_features, 3, 2, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            try:
                same = torch.allclose(backbone.forward_head(features), head(features.mean(dim=(2, 3))), atol=1e-5)
            except RuntimeError:  # a head fixed to one feature-map size (flatten + dense) is no pooling head
                return None
        return head if same else None

    def evidence(self, batch: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A pooling head's class activation map, exact, from the forward pass alone."""
        head = self.pooling_head
        if head is None:
            return super().evidence(batch, count)
        with torch.inference_mode():
            features = self.backbone.forward_features(batch)
            logits = self.backbone.forward_head(features)
            own = features[:count].float()
            direction = (head.weight[POSITIVE_ID] - head.weight[1 - POSITIVE_ID]).float()
            return logits, torch.einsum("bkhw,k->bhw", own, direction) / (own.shape[-2] * own.shape[-1])

    def cam_layers(self) -> tuple[list[nn.Module], ReshapeTransform]:
        backbone = self.backbone
        if hasattr(backbone, "layer4"):  # timm ResNet family
            return [backbone.layer4[-1]], None
        if hasattr(backbone, "conv_head") and hasattr(backbone, "bn2"):  # timm EfficientNet / MobileNet: bn2 holds the activation
            return [backbone.bn2], None
        return [backbone.get_submodule(backbone.feature_info[-1]["module"])], None  # any other timm CNN: its last feature stage


class KerasCNNFamily(TimmCNN):
    """`pneumo_hf.keras_cnn.KerasCNN`: a dense head after the last feature map, so no class activation map."""

    def evidence(self, batch: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """HiResCAM (gradient × activation, summed over channels) at the last ReLU, one backward pass; for the dense
        head that is the first-order share of the logit."""
        with torch.enable_grad():
            *early, last = self.backbone.blocks
            convolved = last[0](nn.Sequential(*early)(batch) if early else batch)
            activation = torch.relu(convolved)
            logits = self.backbone.forward_head(last[2](activation))
            margin = logits[:count, POSITIVE_ID] - logits[:count, 1 - POSITIVE_ID]
            gradient, = torch.autograd.grad(margin.sum(), activation)
            return logits.detach(), (gradient[:count] * activation[:count]).sum(dim=1).detach()


class TimmViT(_Timm):
    """A timm vision transformer (ViT, DeiT)."""

    def cam_layers(self) -> tuple[list[nn.Module], ReshapeTransform]:
        grid_h, grid_w = self.backbone.patch_embed.grid_size
        return [self.backbone.blocks[-1].norm1], _tokens_to_grid(grid_h, grid_w, getattr(self.backbone, "num_prefix_tokens", 1))


class EnsembleOf(_Timm):
    """`pneumo_hf.ensemble.Ensemble`: its members' families answer for it (its first member's input, first layers
    and embedding are the ensemble's)."""

    is_cnn = True

    def __init__(self, backbone: nn.Module):
        super().__init__(backbone)
        self.members = tuple(family_of(member) for member in backbone.members)

    def head(self) -> Optional[nn.Module]:
        return None  # no single head

    def first_convolution(self) -> Optional[nn.Conv2d]:
        return self.members[0].first_convolution()

    def embedding_model(self) -> Optional[nn.Module]:
        return self.members[0].embedding_model()

    def cam_layers(self) -> tuple[list[nn.Module], ReshapeTransform]:
        return [layer for member in self.members for layer in member.cam_layers()[0]], None

    def evidence_at(self, batch: torch.Tensor, count: int, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits of the whole batch, as `Ensemble.forward` gives them, the evidence maps of its first `count` films at
        `size` in logit units): each member's evidence (`Family.evidence`, before any ReLU; a nested ensemble's own)
        weighted as the ensemble averages their logits, 1 / (members · temperature)."""
        logits, evidence = [], torch.zeros(count, *size)
        for member, spec, inputs in zip(self.members, self.backbone.specs, self.backbone.member_inputs(batch), strict=True):
            if member.members:
                member_logits, member_map = member.evidence_at(inputs, count, size)
            else:
                member_logits, member_map = member.evidence(inputs, count)
                member_map = F.interpolate(member_map[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
            logits.append(member_logits)
            evidence += member_map / (len(self.members) * spec["temperature"])
        return self.backbone.combine(logits), evidence

    def layer_groups(self) -> Optional[Callable[..., Any]]:
        return None


class Transformers(Family):
    """A transformers image classifier (ViT, or a CNN such as ResNet and ConvNeXt)."""

    name = "transformers"

    @property
    def architecture(self) -> str:
        return self.backbone.config.model_type

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.backbone(pixel_values=pixel_values).logits

    def head(self) -> Optional[nn.Module]:
        return getattr(self.backbone, "classifier", None)

    def cam_layers(self) -> tuple[list[nn.Module], ReshapeTransform]:
        config = self.backbone.config
        base = getattr(self.backbone, config.model_type)
        if not hasattr(config, "patch_size"):  # a transformers CNN (ResNet, ConvNeXt): its last stage's feature map
            return [base.encoder.stages[-1]], None
        layers = base.layers if hasattr(base, "layers") else base.encoder.layer  # transformers 5 / 4 layout
        grid = config.image_size // config.patch_size
        return [layers[-1].layernorm_before], _tokens_to_grid(grid, grid, prefix_tokens=1)

    def save(self, backbone: nn.Module, folder: Path, extras: dict[str, Any], data_config: dict[str, Any], label_names: list[str]) -> None:
        from transformers import ViTImageProcessor

        backbone.config.update(extras)
        backbone.save_pretrained(folder)
        height, width = data_config["input_size"][-2:]
        ViTImageProcessor(size={"height": height, "width": width}, image_mean=list(data_config["mean"]), image_std=list(data_config["std"])).save_pretrained(folder)


def family_of(backbone: nn.Module) -> Family:
    """The adapter of `backbone`: the one place that tells the families apart."""
    from .ensemble import Ensemble

    if isinstance(backbone, Ensemble):
        return EnsembleOf(backbone)
    from .keras_cnn import KerasCNN

    if isinstance(backbone, KerasCNN):
        return KerasCNNFamily(backbone)
    if hasattr(backbone, "pretrained_cfg"):
        return TimmViT(backbone) if hasattr(backbone, "patch_embed") else TimmCNN(backbone)
    return Transformers(backbone)


def _tokens_to_grid(height: int, width: int, prefix_tokens: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        grid = tokens[:, prefix_tokens:, :].reshape(tokens.size(0), height, width, tokens.size(2))
        return grid.permute(0, 3, 1, 2)

    return reshape
