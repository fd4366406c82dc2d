"""The small three-block CNN of the Keras chest X-ray notebooks, as a timm model: the table's floor.

    python train/train.py --model_name_or_path keras_cnn --image_size 150 ...
    timm.create_model("keras_cnn", num_classes=2, img_size=150)     # once pneumo_hf is imported

`keras_cnn_wide` is the same network with twice the filters in every block (64, 128, 256).

Three blocks of 3×3 convolution (32, 64, 128 filters, ReLU) and 2×2 max pooling, then flatten,
a 128-unit dense layer, dropout 0.5 and the classifier; inputs scaled to [0, 1] (Keras' rescale=1/255).
train/train.py sets the dropout with --drop_rate, default 0 (as timm's train.py --drop does): pass 0.5 for the notebooks'.
Registered with timm, so it builds by name, saves in timm's Hub format and loads from a model folder
through `pneumo_hf` (plain timm or transformers do not know the name).
"""

from __future__ import annotations

from typing import Union

import torch
from timm.layers import to_2tuple
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

__all__ = ["KerasCNN"]


class KerasCNN(nn.Module):
    """conv-relu-maxpool ×3 → flatten → dense 128 → dropout → classifier, with timm's model interface."""

    def __init__(self, num_classes: int = 2, in_chans: int = 3, img_size: Union[int, tuple[int, int]] = 150, drop_rate: float = 0.5, hidden_size: int = 128,
                 filters: tuple[int, ...] = (32, 64, 128)):
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        blocks, channels = [], in_chans
        for out_channels in filters:
            blocks.append(nn.Sequential(nn.Conv2d(channels, out_channels, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2)))
            channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        height, width = to_2tuple(img_size)
        for _ in filters:
            height, width = (height - 2) // 2, (width - 2) // 2
        if min(height, width) < 1:
            raise ValueError(f"img_size {img_size} is too small for {len(filters)} conv + pool blocks; use 32 or more.")
        self.num_features = channels * height * width
        self.feature_info = [{"num_chs": out_channels, "reduction": 2 ** (index + 1), "module": f"blocks.{index}"} for index, out_channels in enumerate(filters)]
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(self.num_features, hidden_size), nn.ReLU(inplace=True), nn.Dropout(drop_rate))
        self.head = nn.Linear(hidden_size, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.head.in_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.hidden(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_CONFIG = {
    "url": "",
    "num_classes": 2,
    "input_size": (3, 150, 150),
    "pool_size": None,
    "fixed_input_size": True,
    "crop_pct": 1.0,
    "interpolation": "bilinear",
    "mean": (0.0, 0.0, 0.0),
    "std": (1.0, 1.0, 1.0),
    "first_conv": "blocks.0.0",
    "classifier": "head",
}
default_cfgs = generate_default_cfgs({"keras_cnn": _CONFIG, "keras_cnn_wide": _CONFIG})


def _create(variant: str, pretrained: bool, **kwargs) -> KerasCNN:
    return build_model_with_cfg(KerasCNN, variant, pretrained, feature_cfg={"flatten_sequential": True}, **kwargs)


@register_model
def keras_cnn(pretrained: bool = False, **kwargs) -> KerasCNN:
    """The Keras notebooks' three-block CNN (no pretrained weights exist)."""
    return _create("keras_cnn", pretrained, **kwargs)


@register_model
def keras_cnn_wide(pretrained: bool = False, **kwargs) -> KerasCNN:
    """The Keras notebooks' CNN with twice the filters: 64, 128, 256."""
    return _create("keras_cnn_wide", pretrained, filters=(64, 128, 256), **kwargs)
