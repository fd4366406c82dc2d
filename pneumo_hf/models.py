"""Build a classifier from a timm or transformers name; save and load the model folder.

    from pneumo_hf.models import build_classifier, PneumoniaClassifier
    model = build_classifier("efficientnet_b0", image_size=224)        # random init (offline)
    model.save_pretrained("runs/b0")                                    # config.json + model.safetensors
    model = PneumoniaClassifier.from_pretrained("runs/b0")              # or a Hub repo id

A timm folder is timm's own Hub format, so `timm.create_model("local-dir:runs/b0", pretrained=True)`
and `transformers.TimmWrapperForImageClassification.from_pretrained("runs/b0")` read it too.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import timm
import torch
from torch import nn

from . import ensemble, keras_cnn  # noqa: F401  (register `pneumo_ensemble` and `keras_cnn` with timm, so they build and load by name)
from .hub import hub_reachable
from .labels import ID2LABEL, LABEL2ID, LABELS

logger = logging.getLogger(__name__)

__all__ = ["ModelError", "PneumoniaClassifier", "build_classifier", "resolve_model_folder"]

_TRANSFORMERS_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


class ModelError(ValueError):
    """A model name or folder that cannot be used; the message names the fix."""


class PneumoniaClassifier(nn.Module):
    """A timm or transformers backbone with two outputs, plus what inference needs to use it:
    its data config (input size, mean, std), the decision threshold, the calibration temperature and
    the test-time views (`pneumo_hf.tta`) that threshold and temperature were fitted with."""

    def __init__(
        self,
        backbone: nn.Module,
        family: str,
        data_config: dict[str, Any],
        threshold: float = 0.5,
        temperature: float = 1.0,
        trained_from_scratch: bool = True,
        test_time_views: Sequence[str] = (),
    ):
        super().__init__()
        self.backbone = backbone
        self.family = family
        self.data_config = data_config
        self.threshold = threshold
        self.temperature = temperature
        self.trained_from_scratch = trained_from_scratch
        self.test_time_views = tuple(test_time_views)

    @property
    def architecture(self) -> str:
        if self.family == "timm":
            return self.backbone.pretrained_cfg["architecture"]
        return self.backbone.config.model_type

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Logits of shape (batch, 2), before temperature."""
        if self.family == "timm":
            return self.backbone(pixel_values)
        return self.backbone(pixel_values=pixel_values).logits

    def fp16_rounded(self, modules: Sequence[str] = ()) -> PneumoniaClassifier:
        """A copy whose weights (only those of the backbone's submodules `modules`, when given) are rounded to fp16
        and computed in fp32: what a folder saved with the same `half` loads as, so its outputs can be checked first."""
        rounded = copy.deepcopy(self)
        _halve(rounded.backbone, modules).float()
        return rounded

    def save_pretrained(self, folder: Union[str, Path], half: Union[bool, Sequence[str]] = False) -> None:
        """Write config.json + model.safetensors in the family's own Hub format: fp32, fp16 when `half` is True, or fp16
        for the backbone's submodules named in `half` (an ensemble's `members.1`) only."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        extras = {
            "decision_threshold": self.threshold,
            "calibration_temperature": self.temperature,
            "test_time_views": list(self.test_time_views),
            "trained_from_scratch": self.trained_from_scratch,
        }
        backbone = _halve(copy.deepcopy(self.backbone), () if half is True else half) if half else self.backbone
        if self.family == "timm":
            data_config = {key: self.data_config[key] for key in ("input_size", "mean", "std", "interpolation")}
            timm.models.save_for_hf(backbone, folder, model_config={"label_names": list(LABELS), **extras}, data_config=data_config, safe_serialization=True)
            _drop_num_classes_from_model_args(folder / "config.json")
            return
        from transformers import ViTImageProcessor

        backbone.config.update(extras)
        backbone.save_pretrained(folder)
        height, width = self.data_config["input_size"][-2:]
        ViTImageProcessor(size={"height": height, "width": width}, image_mean=list(self.data_config["mean"]), image_std=list(self.data_config["std"])).save_pretrained(folder)

    @classmethod
    def from_pretrained(cls, name_or_path: Union[str, Path]) -> PneumoniaClassifier:
        """Load a model folder, local or a Hub repo id."""
        folder = resolve_model_folder(name_or_path)
        config = json.loads((folder / "config.json").read_text())
        extras = {
            "threshold": float(config.get("decision_threshold", 0.5)),
            "temperature": float(config.get("calibration_temperature", 1.0)),
            "trained_from_scratch": bool(config.get("trained_from_scratch", True)),
            "test_time_views": tuple(config.get("test_time_views", ())),
        }
        if "architecture" in config:
            labels = tuple(config.get("label_names") or ())
            if labels != LABELS:
                raise ModelError(f"{folder} has labels {labels}; a pneumo_hf model needs {LABELS}.")
            backbone = timm.create_model(f"local-dir:{folder}", pretrained=True)
            return cls(backbone, "timm", _timm_data_config(backbone), **extras)
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        backbone = AutoModelForImageClassification.from_pretrained(folder)
        labels = tuple(backbone.config.id2label[i] for i in range(backbone.config.num_labels))
        if labels != LABELS:
            raise ModelError(f"{folder} has labels {labels}; a pneumo_hf model needs {LABELS}.")
        return cls(backbone, "transformers", _processor_data_config(AutoImageProcessor.from_pretrained(folder)), **extras)


def _drop_num_classes_from_model_args(config_path: Path) -> None:
    """transformers' TimmWrapper passes num_classes itself and fails when model_args repeats it;
    timm reads it from the top-level `num_classes` as well, so the copy in model_args is redundant."""
    config = json.loads(config_path.read_text())
    config.get("model_args", {}).pop("num_classes", None)
    config_path.write_text(json.dumps(config, indent=2))


def _halve(backbone: nn.Module, modules: Sequence[str]) -> nn.Module:
    """The backbone with the named submodules (all of it when none are named) turned to fp16, in place."""
    for module in [backbone.get_submodule(name) for name in modules] or [backbone]:
        module.half()
    return backbone


def resolve_model_folder(name_or_path: Union[str, Path]) -> Path:
    """A local model folder as it is, or a Hub repo id downloaded to the cache."""
    path = Path(name_or_path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is a folder but holds no config.json; point at a model folder written by train/train.py.")
        return path
    if path.exists() or str(name_or_path).count("/") != 1:
        raise ModelError(f"{name_or_path!r} is neither a model folder nor a Hub repo id (ORG/NAME).")
    from huggingface_hub import snapshot_download

    try:  # offline, a copy in the Hub cache still loads
        return Path(snapshot_download(str(name_or_path), allow_patterns=["*.json", "*.safetensors", "*.md", "*.png"], local_files_only=not hub_reachable()))
    except Exception as error:  # huggingface_hub raises many types for offline/missing repos
        raise ModelError(f"Could not fetch model {name_or_path!r} from the Hub ({type(error).__name__}); check the id and your connection, or pass a local model folder.") from error


def build_classifier(
    model_name_or_path: str,
    pretrained: bool = False,
    image_size: Optional[int] = None,
    config_overrides: Optional[str] = None,
    drop_rate: float = 0.0,
) -> PneumoniaClassifier:
    """A two-class classifier from a timm architecture name, a transformers model type (`vit`),
    a local model folder, or a Hub id of either. Random init unless `pretrained`."""
    if Path(model_name_or_path).is_dir():
        return PneumoniaClassifier.from_pretrained(model_name_or_path)
    if timm.is_model(model_name_or_path):
        return _build_timm(model_name_or_path, pretrained, image_size, drop_rate)
    if _is_transformers_type(model_name_or_path):
        if pretrained:
            raise ModelError(f"{model_name_or_path!r} is a transformers model type, which has no weights; drop `pretrained` or pass a Hub id such as google/vit-base-patch16-224.")
        return _build_transformers_from_scratch(model_name_or_path, image_size, config_overrides)
    if model_name_or_path.count("/") == 1:
        return _build_from_hub(model_name_or_path, pretrained, image_size)
    close = timm.list_models(f"*{model_name_or_path}*")[:5]
    hint = f" Did you mean one of {close}?" if close else " See timm.list_models() for timm names."
    raise ModelError(f"Unknown model {model_name_or_path!r}: not a timm architecture, a transformers model type, a model folder or a Hub id.{hint}")


def _build_timm(name: str, pretrained: bool, image_size: Optional[int], drop_rate: float) -> PneumoniaClassifier:
    kwargs: dict[str, Any] = {"num_classes": len(LABELS), "drop_rate": drop_rate}
    if pretrained and not hub_reachable():
        raise ModelError(f"Pretrained weights for {name!r} come from the Hub, which is not reachable; drop `pretrained` to train from random init.")
    try:
        backbone = _create_timm(name, pretrained, kwargs, image_size)
    except (OSError, RuntimeError) as error:
        if not pretrained:
            raise
        raise ModelError(f"Could not download pretrained weights for {name!r} from the Hub ({type(error).__name__}); drop `pretrained` to train from random init, or connect to the Hub.") from error
    data_config = _timm_data_config(backbone)
    if image_size:
        data_config["input_size"] = (3, image_size, image_size)
    logger.info("Built timm %s (%s).", name, "pretrained weights from the Hub" if pretrained else "random init: trained from scratch")
    return PneumoniaClassifier(backbone, "timm", data_config, trained_from_scratch=not pretrained)


def _create_timm(name: str, pretrained: bool, kwargs: dict[str, Any], image_size: Optional[int]) -> nn.Module:
    if image_size:
        try:  # transformers-style models (ViT) fix their input size at build time; CNNs take any size
            return timm.create_model(name, pretrained=pretrained, img_size=image_size, **kwargs)
        except TypeError:
            pass
    return timm.create_model(name, pretrained=pretrained, **kwargs)


def _timm_data_config(backbone: nn.Module) -> dict[str, Any]:
    config = timm.data.resolve_model_data_config(backbone)
    return {"input_size": tuple(config["input_size"]), "mean": tuple(config["mean"]), "std": tuple(config["std"]), "interpolation": config["interpolation"]}


def _is_transformers_type(name: str) -> bool:
    from transformers import CONFIG_MAPPING

    return name in CONFIG_MAPPING


def _build_transformers_from_scratch(model_type: str, image_size: Optional[int], config_overrides: Optional[str]) -> PneumoniaClassifier:
    from transformers import AutoConfig, AutoModelForImageClassification

    config = AutoConfig.for_model(model_type, num_labels=len(LABELS), id2label=ID2LABEL, label2id=LABEL2ID)
    if image_size:
        config.image_size = image_size
    if config_overrides:
        try:
            config.update_from_string(config_overrides)
        except ValueError as error:
            raise ModelError(f"`config_overrides` {config_overrides!r}: {error}") from error
    try:
        backbone = AutoModelForImageClassification.from_config(config)
    except ValueError as error:
        raise ModelError(f"{model_type!r} is a transformers model type without an image-classification head ({error}).") from error
    size = config.image_size
    mean, std = _TRANSFORMERS_MEAN_STD
    logger.info("Built transformers %s from config (random init: trained from scratch).", model_type)
    return PneumoniaClassifier(backbone, "transformers", {"input_size": (3, size, size), "mean": mean, "std": std, "interpolation": "bilinear"})


def _build_from_hub(repo_id: str, pretrained: bool, image_size: Optional[int]) -> PneumoniaClassifier:
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

    if not hub_reachable():
        raise ModelError(f"Unknown model {repo_id!r}: not a timm name, a transformers model type or a local folder, and the Hub is not reachable to look it up. Offline, use a timm name (resnet50, efficientnet_b0, vit_small_patch16_224).")
    try:
        config = AutoConfig.from_pretrained(repo_id, num_labels=len(LABELS), id2label=ID2LABEL, label2id=LABEL2ID)
        if config.model_type == "timm_wrapper":
            return _build_timm(f"hf-hub:{repo_id}", pretrained, image_size, 0.0)
        if not pretrained:
            backbone = AutoModelForImageClassification.from_config(config)
        else:
            backbone = AutoModelForImageClassification.from_pretrained(repo_id, config=config, ignore_mismatched_sizes=True)
        processor = AutoImageProcessor.from_pretrained(repo_id)
    except OSError as error:
        raise ModelError(f"Unknown model {repo_id!r}: the Hub could not provide it ({type(error).__name__}); check the repo id.") from error
    return PneumoniaClassifier(backbone, "transformers", _processor_data_config(processor), trained_from_scratch=not pretrained)


def _processor_data_config(processor) -> dict[str, Any]:
    size = processor.size
    return {"input_size": (3, size["height"], size["width"]), "mean": tuple(processor.image_mean), "std": tuple(processor.image_std), "interpolation": "bilinear"}
