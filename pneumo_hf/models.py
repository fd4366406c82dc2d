"""Build a classifier from a timm or transformers name; save and load the model folder.

    from pneumo_hf.models import build_classifier, PneumoniaClassifier
    model = build_classifier("efficientnet_b0", image_size=224)        # random init (offline)
    model = build_classifier("timm/efficientnet_b0.ra_in1k")            # fine-tune: the Hub cache, then the Hub
    model = build_classifier("checkpoints/vit-base")                    # a folder from `hf download ID --local-dir`
    model.save_pretrained("runs/b0")                                    # config.json + model.safetensors
    model = PneumoniaClassifier.from_pretrained("runs/b0")              # or a Hub repo id

A timm folder is timm's own Hub format, so `timm.create_model("local-dir:runs/b0", pretrained=True)`
and `transformers.TimmWrapperForImageClassification.from_pretrained("runs/b0")` read it too.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import timm
import torch
from PIL import Image
from torch import nn

from . import ensemble, keras_cnn  # noqa: F401  (register `pneumo_ensemble` and `keras_cnn` with timm, so they build and load by name)
from .errors import UserError
from .families import family_of
from .folder import CONFIG, ModelFolder
from .hub import hub_reachable
from .labels import ID2LABEL, LABEL2ID, LABELS
from .schema import Calibrated

logger = logging.getLogger(__name__)

__all__ = ["ModelError", "PneumoniaClassifier", "build_classifier", "from_checkpoint", "head_of", "hub_snapshot", "resolve_model_folder"]

CHECKPOINT_FILES = ("*.json", "*.safetensors")  # what fine-tuning needs of a checkpoint repo: configs and weights

_TRANSFORMERS_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


class ModelError(UserError, ValueError):
    """A model name or folder that cannot be used; the message names the fix."""


class PneumoniaClassifier(nn.Module):
    """A timm or transformers backbone with two outputs, plus what inference needs to use it:
    its data config (input size, mean, std), the decision threshold, the calibration temperature, the
    test-time views (`pneumo_hf.tta`) that threshold and temperature were fitted with, and the checkpoint it was
    fine-tuned from (None from scratch)."""

    def __init__(
        self,
        backbone: nn.Module,
        data_config: dict[str, Any],
        threshold: float = 0.5,
        temperature: float = 1.0,
        trained_from_scratch: bool = True,
        intercept: float = 0.0,
        test_time_views: Sequence[str] = (),
        base_model: Optional[str] = None,
        base_model_revision: Optional[str] = None,
        weights_source: Optional[dict[str, Any]] = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.adapter = family_of(backbone)  # what the rest asks of the backbone, answered per family
        self.data_config = data_config
        self.threshold = threshold
        self.temperature = temperature
        self.intercept = intercept  # Platt's, added to the PNEUMONIA logit after the temperature (0: temperature alone)
        self.trained_from_scratch = trained_from_scratch
        self.test_time_views = tuple(test_time_views)
        self.base_model = base_model  # the checkpoint it was fine-tuned from: a Hub id, or a local folder
        self.base_model_revision = base_model_revision
        self.weights_source = weights_source  # where a packaged checkpoint's weights came from (pneumo_hf.checkpoints)

    @property
    def family(self) -> str:
        """"timm" or "transformers": whose Hub format the folder is in."""
        return self.adapter.name

    @property
    def architecture(self) -> str:
        return self.adapter.architecture

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Logits of shape (batch, 2), before temperature."""
        return self.adapter.logits(pixel_values)

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
        extras = Calibrated(
            self.threshold, self.temperature, self.intercept, list(self.test_time_views), self.trained_from_scratch, self.base_model, self.base_model_revision, self.weights_source
        ).config()
        backbone = _halve(copy.deepcopy(self.backbone), () if half is True else half) if half else self.backbone
        self.adapter.save(backbone, folder, extras, self.data_config, list(LABELS))

    @classmethod
    def from_pretrained(cls, name_or_path: Union[str, Path]) -> PneumoniaClassifier:
        """Load a model folder, local or a Hub repo id."""
        folder = resolve_model_folder(name_or_path)
        config = ModelFolder(folder).read(CONFIG)
        stored = Calibrated.of(config)
        extras = {
            "threshold": float(stored.decision_threshold), "temperature": float(stored.calibration_temperature), "intercept": float(stored.calibration_intercept),
            "trained_from_scratch": bool(stored.trained_from_scratch), "test_time_views": tuple(stored.test_time_views), "base_model": stored.base_model,
            "base_model_revision": stored.base_model_revision, "weights_source": stored.weights_source,
        }
        if "architecture" in config:
            labels = tuple(config.get("label_names") or ())
            if labels != LABELS:
                raise ModelError(f"{folder} has labels {labels}; a pneumo_hf model needs {LABELS}.")
            backbone = timm.create_model(f"local-dir:{folder}", pretrained=True)
            return cls(backbone, _timm_data_config(backbone), **extras)
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        backbone = AutoModelForImageClassification.from_pretrained(folder)
        labels = tuple(backbone.config.id2label[i] for i in range(backbone.config.num_labels))
        if labels != LABELS:
            raise ModelError(f"{folder} has labels {labels}; a pneumo_hf model needs {LABELS}.")
        return cls(backbone, _processor_data_config(AutoImageProcessor.from_pretrained(folder)), **extras)


def head_of(classifier: PneumoniaClassifier) -> nn.Module:
    """The two-class head that replaced the checkpoint's: timm's `get_classifier()`, transformers' `classifier`."""
    head = classifier.adapter.head()
    if not isinstance(head, nn.Module) or not any(True for _ in head.parameters()):
        raise ModelError(f"{classifier.architecture} has no separate classifier head to train alone; drop --freeze_backbone_epochs.")
    return head


def _halve(backbone: nn.Module, modules: Sequence[str]) -> nn.Module:
    """The backbone with the named submodules (all of it when none are named) turned to fp16, in place."""
    for module in [backbone.get_submodule(name) for name in modules] or [backbone]:
        module.half()
    return backbone


def resolve_model_folder(name_or_path: Union[str, Path]) -> Path:
    """A local model folder as it is, or a Hub repo id downloaded to the cache."""
    path = Path(name_or_path)
    if path.is_dir():
        if not ModelFolder(path).has(CONFIG):
            raise ModelError(f"{path} is a folder but holds no config.json; point at a model folder written by train/train.py.")
        return path
    if path.exists() or str(name_or_path).count("/") != 1:
        raise ModelError(f"{name_or_path!r} is neither a model folder nor a Hub repo id (ORG/NAME).")
    return hub_snapshot(str(name_or_path), ["*.json", "*.safetensors", "*.md", "*.png"])


def hub_snapshot(repo_id: str, allow_patterns: Sequence[str]) -> Path:
    """The repo's snapshot folder through huggingface_hub: the Hugging Face cache first (HF_HUB_CACHE), the Hub when it
    is reachable, nothing else when HF_HUB_OFFLINE is set. The folder's name is the commit it holds."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    online = hub_reachable()
    try:
        return Path(snapshot_download(repo_id, allow_patterns=list(allow_patterns), local_files_only=not online))
    except LocalEntryNotFoundError as error:
        if online:
            raise ModelError(f"Could not download {repo_id!r} from the Hub ({type(error).__name__}); check your connection, or pass a local folder.") from error
        raise ModelError(f"{repo_id!r} is not in the Hugging Face cache and the Hub is not reachable: run `hf download {repo_id}` on a machine that reaches the Hub (then copy its cache here), or pass a folder made by `hf download {repo_id} --local-dir DIR`.") from error
    except Exception as error:  # huggingface_hub raises many types for missing repos, auth and HTTP errors
        raise ModelError(f"Could not fetch {repo_id!r} from the Hub ({type(error).__name__}); check the repo id and your access, or pass a local folder.") from error


def build_classifier(
    model_name_or_path: str,
    pretrained: bool = False,
    image_size: Optional[int] = None,
    config_overrides: Optional[str] = None,
    drop_rate: float = 0.0,
) -> PneumoniaClassifier:
    """A two-class classifier, as transformers' example scripts read `--model_name_or_path`: a timm architecture name or a
    transformers model type builds random init (`pretrained`: timm's default pretrained tag, from the Hub or its
    cache); a Hub id or a local folder of a timm or transformers checkpoint loads its weights with a new head; a
    pneumo_hf model folder loads as it is (to train on)."""
    if Path(model_name_or_path).is_dir():
        return from_checkpoint(Path(model_name_or_path), image_size=image_size, drop_rate=drop_rate)
    if timm.is_model(model_name_or_path):
        if pretrained:
            repo_id = timm.models.get_pretrained_cfg(model_name_or_path).hf_hub_id if timm.models.is_model_pretrained(model_name_or_path) else None
            if not repo_id:
                raise ModelError(f"timm has no pretrained weights on the Hub for {model_name_or_path!r}; drop `--pretrained` to train from random init.")
            return from_checkpoint(hub_snapshot(repo_id, CHECKPOINT_FILES), repo_id, image_size, drop_rate)
        return _build_timm(model_name_or_path, image_size, drop_rate)
    if _is_transformers_type(model_name_or_path):
        if pretrained:
            raise ModelError(f"{model_name_or_path!r} is a transformers model type, which has no weights; drop `--pretrained` or pass a Hub id such as google/vit-base-patch16-224.")
        return _build_transformers_from_scratch(model_name_or_path, image_size, config_overrides)
    if model_name_or_path.count("/") == 1 and not Path(model_name_or_path).exists():
        return from_checkpoint(hub_snapshot(model_name_or_path, CHECKPOINT_FILES), model_name_or_path, image_size, drop_rate)
    close = timm.list_models(f"*{model_name_or_path}*")[:5]
    hint = f" Did you mean one of {close}?" if close else " See timm.list_models() for timm names."
    raise ModelError(f"Unknown model {model_name_or_path!r}: not a timm architecture, a transformers model type, a model folder or a Hub id.{hint}")


def from_checkpoint(folder: Path, repo_id: Optional[str] = None, image_size: Optional[int] = None, drop_rate: float = 0.0) -> PneumoniaClassifier:
    """A classifier from a checkpoint folder in timm's or transformers' Hub format (a Hub snapshot, or a folder made by
    `hf download ID --local-dir DIR`): its weights, a new two-class head, and preprocessing from the checkpoint
    (`image_size` overrides the size). A pneumo_hf model folder loads as it is."""
    config = ModelFolder(folder).read(CONFIG)
    if config is None:
        raise ModelError(f"{folder} holds no config.json: pass a model folder, or a checkpoint folder made by `hf download ID --local-dir DIR`.")
    if "decision_threshold" in config:  # a model folder written by pneumo_hf
        return PneumoniaClassifier.from_pretrained(folder)
    revision = folder.name if repo_id and re.fullmatch(r"[0-9a-f]{40}", folder.name) else None  # a cache snapshot is named by its commit
    source = f"{repo_id}{f' (revision {revision[:12]})' if revision else ''}" if repo_id else str(folder)
    if "architecture" in config:
        kwargs: dict[str, Any] = {"num_classes": len(LABELS), "drop_rate": drop_rate}
        backbone = _create_timm(f"local-dir:{folder}", True, kwargs, image_size)
        data_config = _timm_data_config(backbone)
    elif "model_type" in config:
        backbone, data_config = _load_transformers_checkpoint(folder, config, image_size)
    else:
        raise ModelError(f"{ModelFolder(folder).file(CONFIG)} is neither timm's format (`architecture`) nor transformers' (`model_type`).")
    if image_size:
        data_config["input_size"] = (3, image_size, image_size)
    classifier = PneumoniaClassifier(backbone, data_config, trained_from_scratch=False, base_model=repo_id or str(folder), base_model_revision=revision, weights_source=config.get("weights_source"))
    logger.info("Loaded %s weights of %s from %s with a new %d-class head: fine-tuning, not training from scratch.", classifier.family, classifier.architecture, source, len(LABELS))
    return classifier


def _load_transformers_checkpoint(folder: Path, config: dict[str, Any], image_size: Optional[int]) -> tuple[nn.Module, dict[str, Any]]:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    trained_at = config.get("image_size")
    if image_size and trained_at and image_size != trained_at:
        raise ModelError(f"{folder} is a transformers checkpoint trained at {trained_at} px, whose position embeddings fix its input size; drop --image_size.")
    try:
        backbone = AutoModelForImageClassification.from_pretrained(folder, num_labels=len(LABELS), id2label=ID2LABEL, label2id=LABEL2ID, ignore_mismatched_sizes=True)
    except (OSError, ValueError) as error:
        raise ModelError(f"{folder} could not be loaded as a transformers image classifier ({error}).") from error
    try:
        return backbone, _processor_data_config(AutoImageProcessor.from_pretrained(folder))
    except OSError:  # no preprocessor_config.json: the model's own size and transformers' usual normalisation
        size = trained_at or 224
        logger.warning("%s has no preprocessor_config.json: input %d px, mean/std %s assumed.", folder, size, _TRANSFORMERS_MEAN_STD[0])
        mean, std = _TRANSFORMERS_MEAN_STD
        return backbone, {"input_size": (3, size, size), "mean": mean, "std": std, "interpolation": "bilinear"}


def _build_timm(name: str, image_size: Optional[int], drop_rate: float) -> PneumoniaClassifier:
    backbone = _create_timm(name, False, {"num_classes": len(LABELS), "drop_rate": drop_rate}, image_size)
    data_config = _timm_data_config(backbone)
    if image_size:
        data_config["input_size"] = (3, image_size, image_size)
    logger.info("Built timm %s (random init: trained from scratch).", name)
    return PneumoniaClassifier(backbone, data_config)


def _create_timm(name: str, pretrained: bool, kwargs: dict[str, Any], image_size: Optional[int]) -> nn.Module:
    if image_size:
        try:  # transformers-style models (ViT) fix their input size at build time (timm resamples a checkpoint's position embeddings); CNNs take any size
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
    size = getattr(config, "image_size", None) or image_size or 224
    mean, std = _TRANSFORMERS_MEAN_STD
    logger.info("Built transformers %s from config (random init: trained from scratch).", model_type)
    return PneumoniaClassifier(backbone, {"input_size": (3, size, size), "mean": mean, "std": std, "interpolation": "bilinear"})


def _processor_data_config(processor) -> dict[str, Any]:
    """Input size, mean, std and interpolation of a transformers image processor (`{height, width}` as ViT's,
    `{shortest_edge}` as ResNet's and ConvNeXt's)."""
    size = processor.size
    height, width = (size["height"], size["width"]) if size.get("height") else (size["shortest_edge"], size["shortest_edge"])
    resample = getattr(processor, "resample", None)
    interpolation = Image.Resampling(resample).name.lower() if resample is not None else "bilinear"
    if interpolation not in ("nearest", "bilinear", "bicubic"):
        interpolation = "bilinear"
    return {"input_size": (3, height, width), "mean": tuple(processor.image_mean), "std": tuple(processor.image_std), "interpolation": interpolation}
