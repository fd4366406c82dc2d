"""What a model folder's JSON files hold: config.json's extras (`Calibrated`), all_results.json (`Results`),
training_summary.json (`TrainingSummary`) and how the weights are stored (`Storage`). `pneumo_hf.folder.ModelFolder`
reads and writes them; `pneumo_hf.evaluation.finalize` builds them from a `Run`.

    from pneumo_hf.folder import ModelFolder
    folder = ModelFolder("runs/b0")
    folder.results().test_dev["sensitivity"], folder.summary().command

A value that holds nothing is left out of the file, so that folders written before each key read back as they were;
the figure called `recall` in folders written before issue 42 reads back as `sensitivity` (`current`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional, Union

from .errors import UserError

__all__ = ["Calibrated", "Results", "Run", "Storage", "TrainingSummary", "current"]

LEGACY_NAMES = {"recall": "sensitivity", "lowest_recall": "lowest_sensitivity"}  # as folders before issue 42 named them
SPLITS = ("test_dev", "validation")  # all_results.json's figures: `test_dev_roc_auc`, `validation_roc_auc`, ...


def current(found: Any) -> Any:
    """`found` (figures, or a JSON file's content) with the names of today: `recall` becomes `sensitivity`."""
    if isinstance(found, dict):
        return {LEGACY_NAMES.get(key, key): current(value) for key, value in found.items()}
    if isinstance(found, list):
        return [current(value) for value in found]
    return found


def _present(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _known(cls, content: dict[str, Any]) -> dict[str, Any]:
    return {spec.name: content[spec.name] for spec in fields(cls) if spec.name in content}


@dataclass
class Calibrated:
    """What pneumo_hf adds to timm's or transformers' config.json: how the logits become a decision, and where the
    weights began. Written without the keys that hold nothing (an intercept of 0, no base model, no packaged weights),
    so folders from before each key read back as they were."""

    decision_threshold: float = 0.5
    calibration_temperature: float = 1.0
    calibration_intercept: float = 0.0  # Platt's, on the PNEUMONIA logit after the temperature
    test_time_views: list[str] = field(default_factory=list)
    trained_from_scratch: bool = True
    base_model: Optional[str] = None  # the checkpoint it was fine-tuned from: a Hub id, or a local folder
    base_model_revision: Optional[str] = None
    weights_source: Optional[dict[str, Any]] = None  # a packaged checkpoint's package, version, file and sha256

    @classmethod
    def of(cls, config: dict[str, Any]) -> Calibrated:
        """Read from a config.json (defaults where a key is absent)."""
        found = cls(**{spec.name: config[spec.name] for spec in fields(cls) if config.get(spec.name) is not None})
        found.test_time_views = list(found.test_time_views)
        return found

    def config(self) -> dict[str, Any]:
        """As config.json holds it."""
        return {
            "decision_threshold": self.decision_threshold,
            "calibration_temperature": self.calibration_temperature,
            **({"calibration_intercept": self.calibration_intercept} if self.calibration_intercept else {}),
            "test_time_views": list(self.test_time_views),
            "trained_from_scratch": self.trained_from_scratch,
            **({"base_model": self.base_model, "base_model_revision": self.base_model_revision} if self.base_model else {}),
            **({"weights_source": self.weights_source} if self.weights_source else {}),
        }


@dataclass
class Storage:
    """How the weights are stored: `dtype` float32, float16 or mixed (an ensemble's `fp16_members` in fp16), and the
    largest change of a validation probability that fp16 makes (None: fp16 not tried)."""

    dtype: str = "float32"
    fp16_max_change: Optional[float] = None
    fp16_members: Optional[list[str]] = None  # an ensemble's, as `members.I`

    @property
    def half(self) -> Union[bool, list[str]]:
        """As `PneumoniaClassifier.save_pretrained(half=...)` takes it."""
        return self.fp16_members if self.fp16_members is not None else self.dtype == "float16"

    def json(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "fp16_max_change": self.fp16_max_change, **_present({"fp16_members": self.fp16_members})}


@dataclass
class Run:
    """What only the caller of `finalize` knows of how the weights were made: train/train.py's run, or an ensemble's
    members (`members`: the folders as named; `member_origins`: how each began; `member_epochs`: each one's epochs)."""

    command: str
    loss: str
    class_weights: Union[list[float], str]
    epochs_run: int
    train_images: int
    train_seconds: float
    skipped_images: Optional[int] = None
    linear_probe_c: Optional[float] = None
    members: Optional[list[str]] = None
    member_origins: Optional[list[dict[str, Any]]] = None
    member_epochs: Optional[list[int]] = None


@dataclass
class Results:
    """all_results.json: each split's figures (`metrics.classification_metrics`), then the facts of the run. Keys of
    other writers are kept in `others`."""

    validation: dict[str, Any]
    temperature: float
    trained_from_scratch: bool
    weights_dtype: str
    epochs_run: int
    train_images: int
    train_seconds: float
    test_dev: Optional[dict[str, Any]] = None
    members: Optional[list[str]] = None  # an ensemble's member folders, as named
    skipped_images: Optional[int] = None  # a training run's unreadable films
    base_model: Optional[str] = None
    base_model_revision: Optional[str] = None  # written beside a base model, null included
    fp16_members: Optional[list[str]] = None
    fp16_max_probability_change: Optional[float] = None
    others: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, content: dict[str, Any]) -> Results:
        splits = {split: current({key[len(split) + 1:]: value for key, value in content.items() if key.startswith(split + "_")}) for split in SPLITS}
        rest = {key: value for key, value in content.items() if not key.startswith(tuple(split + "_" for split in SPLITS))}
        known = _known(cls, rest)
        try:
            return cls(**known, validation=splits["validation"], test_dev=splits["test_dev"] or None, others={key: value for key, value in rest.items() if key not in known})
        except TypeError as error:
            raise UserError(f"all_results.json lacks what a finished run writes ({error}); write the folder again with train/train.py or pneumo-hf ensemble.") from error

    def json(self) -> dict[str, Any]:
        figures = {f"{split}_{key}": value for split in SPLITS for key, value in (getattr(self, split) or {}).items()}
        facts = _present({spec.name: getattr(self, spec.name) for spec in fields(self) if spec.name not in (*SPLITS, "others")})
        if self.base_model:
            facts["base_model_revision"] = self.base_model_revision
        return {**figures, **facts, **self.others}


@dataclass
class TrainingSummary:
    """training_summary.json: how the weights were made, for the card. A single model records where it began
    (`base_model`, `weights_source`, `linear_probe_c`; null included); an ensemble records it per member (`members`)."""

    family: str
    architecture: str
    trained_from_scratch: bool
    threshold_rule: str
    temperature: float
    test_time_views: list[str]
    storage: Storage
    input_size: list[int]
    mean: list[float]
    std: list[float]
    loss: str
    class_weights: Union[list[float], str]
    epochs_run: Union[int, str]  # an ensemble's: each member's, "0 + 10"
    train_images: int
    train_seconds: float
    command: str
    model_id: Optional[str] = None
    base_model: Optional[str] = None
    base_model_revision: Optional[str] = None
    weights_source: Optional[dict[str, Any]] = None
    linear_probe_c: Optional[float] = None
    members: Optional[list[dict[str, Any]]] = None

    @property
    def is_ensemble(self) -> bool:
        return self.members is not None

    @classmethod
    def of(cls, content: dict[str, Any]) -> TrainingSummary:
        known = _known(cls, content)
        try:
            return cls(**{**known, "storage": Storage(**content.get("storage", {}))})
        except TypeError as error:
            raise UserError(f"training_summary.json lacks what a finished run writes ({error}); write the folder again with train/train.py or pneumo-hf ensemble.") from error

    def json(self) -> dict[str, Any]:
        found = {**asdict(self), "storage": self.storage.json()}
        start = ("base_model", "base_model_revision", "weights_source", "linear_probe_c")
        return {key: value for key, value in found.items() if not (key == "members" and value is None) and not (self.is_ensemble and key in start)}
