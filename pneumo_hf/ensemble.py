"""Several trained model folders as one timm model: the mean of the members' calibrated logits.

    pneumo-hf ensemble runs/b0 runs/keras_cnn --output_dir runs/ensemble \
        --test_dev_dir ../shared/data/chest_xray_224/test_dev
    load_predictor("runs/ensemble")

The ensemble takes the first member's input (size, mean, std); the others get it back to pixels, resized
to their own input size and normalised their way, inside `forward`. Each member's logits are divided by its
own calibration temperature before the mean; the ensemble's temperature and threshold are fitted on top.
Registered with timm as `pneumo_ensemble`, so the folder is one `config.json` (the members' architectures and
preprocessing in `model_args`) and one `model.safetensors`, loadable by name once pneumo_hf is imported.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from .transforms import denormalise, normalise

__all__ = ["Ensemble", "member_spec"]


def member_spec(backbone: nn.Module, data_config: dict[str, Any], temperature: float) -> dict[str, Any]:
    """What rebuilds one member (architecture and its construction arguments) and feeds it (input size, mean,
    std), plus its calibration temperature: JSON, for the ensemble's `model_args`."""
    arguments = {key: list(value) if isinstance(value, tuple) else value for key, value in getattr(backbone, "_model_args", {}).items() if key not in ("num_classes", "in_chans")}
    return {
        "architecture": backbone.pretrained_cfg["architecture"],
        "model_args": arguments,
        "input_size": list(data_config["input_size"]),
        "mean": list(data_config["mean"]),
        "std": list(data_config["std"]),
        "temperature": float(temperature),
    }


class Ensemble(nn.Module):
    """The mean of the members' temperature-scaled logits; inputs are normalised as the first member wants."""

    def __init__(self, members: list[dict[str, Any]], num_classes: int = 2, in_chans: int = 3):
        super().__init__()
        if len(members) < 2:
            raise ValueError("An ensemble needs at least two members.")
        self.num_classes = num_classes
        self.specs = members
        self.members = nn.ModuleList(timm.create_model(spec["architecture"], num_classes=num_classes, in_chans=in_chans, **spec["model_args"]) for spec in members)
        self.num_features = sum(member.num_features for member in self.members)
        self.feature_info = [{"num_chs": 0, "reduction": 1, "module": "members"}]

    def member_inputs(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """The batch as each member wants it: the first member's own, the others resized and renormalised."""
        first = self.specs[0]
        pixels = denormalise(pixel_values, first["mean"], first["std"])
        inputs = []
        for spec in self.specs:
            if spec["input_size"] == first["input_size"] and spec["mean"] == first["mean"] and spec["std"] == first["std"]:
                inputs.append(pixel_values)
                continue
            resized = F.interpolate(pixels, size=tuple(spec["input_size"][-2:]), mode="bilinear", antialias=True, align_corners=False)
            inputs.append(normalise(resized, spec["mean"], spec["std"]))
        return inputs

    def get_classifier(self) -> nn.Module:
        return nn.Identity()  # no single head: heatmaps go through Grad-CAM on every member

    def combine(self, member_logits: Sequence[torch.Tensor]) -> torch.Tensor:
        """The ensemble's logits from its members': the mean of each divided by its temperature (the one definition,
        for `forward` and for the heatmap's pass)."""
        return torch.stack([logits / spec["temperature"] for logits, spec in zip(member_logits, self.specs, strict=True)]).mean(dim=0)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.combine([member(x) for member, x in zip(self.members, self.member_inputs(pixel_values), strict=True)])


default_cfgs = generate_default_cfgs(
    {"pneumo_ensemble": {"url": "", "num_classes": 2, "input_size": (3, 224, 224), "pool_size": None, "crop_pct": 1.0, "interpolation": "bilinear", "classifier": ""}}
)


@register_model
def pneumo_ensemble(pretrained: bool = False, **kwargs) -> Ensemble:
    """An ensemble of trained pneumo_hf members (see `pneumo_hf.assembly`); no pretrained weights exist."""
    return build_model_with_cfg(Ensemble, "pneumo_ensemble", pretrained, feature_cfg={"flatten_sequential": True}, **kwargs)
