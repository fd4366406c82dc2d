"""The model folder: the name of every file in it, and every read and write of it. Training, ensembles, calibration,
the model card, the page and the batch command all go through `ModelFolder`.

    from pneumo_hf.folder import ModelFolder
    folder = ModelFolder("runs/b0")
    folder.results().test_dev["roc_auc"], folder.summary().command, folder.plots()

What the JSON files hold is `pneumo_hf.schema`. What a folder holds (what `pneumo_hf.evaluation.finalize` writes, the Hub stores and the app loads):

| file | what | written by |
| --- | --- | --- |
| config.json, model.safetensors | timm's or transformers' Hub format, plus threshold and temperature | `PneumoniaClassifier.save_pretrained` |
| all_results.json | the figures: `test_dev_*`, `validation_*`, run facts | `finalize`, train/write_card.py |
| training_args.json | the run's flags: its data and its validation split | `finalize` |
| training_summary.json | how it was trained, for the card | `finalize` |
| README.md | the model card | `pneumo_hf.card.write_model_card` |
| SPLIT_roc_curve.png, ... | the plots of a split; training_curves.png | `finalize` |
| domain_check.json, domain_check.safetensors | the domain check (`pneumo_hf.domain`) | training, `pneumo-hf fit-domain-check` |
| calibration.json | a site's refit of temperature and threshold | `pneumo-hf calibrate` |
| maintainers_results.json | figures the maintainers measured, bound to the weights' SHA-256 | the maintainers |
| best_model/, checkpoints/ | a run's best weights and resumable state | training |
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, Union

from .errors import ArgumentError
from .schema import Calibrated, Results, TrainingSummary, current

logger = logging.getLogger(__name__)

__all__ = [
    "ADAPTATION", "ARGUMENTS", "BEST_MODEL", "CALIBRATION", "CARD", "CHECKPOINTS", "CONFIG", "DOMAIN_CHECK", "DOMAIN_CHECK_WEIGHTS", "MAINTAINERS",
    "PLOTTED_SPLITS", "PLOT_KINDS", "RESULTS", "SUMMARY", "TRAINING_CURVES", "WEIGHTS", "ModelFolder", "plot_name",
]

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
RESULTS = "all_results.json"
ARGUMENTS = "training_args.json"
SUMMARY = "training_summary.json"
CARD = "README.md"
CALIBRATION = "calibration.json"
ADAPTATION = "adaptation.json"
MAINTAINERS = "maintainers_results.json"
DOMAIN_CHECK = "domain_check.json"
DOMAIN_CHECK_WEIGHTS = "domain_check.safetensors"
TRAINING_CURVES = "training_curves.png"
BEST_MODEL = "best_model"
CHECKPOINTS = "checkpoints"
PLOT_KINDS = ("roc_curve", "confusion_matrix", "reliability")
PLOTTED_SPLITS = ("test_dev", "validation")  # the card's and the page's order: the films it never saw first


def plot_name(split: str, kind: str) -> str:
    """The file name of one plot of a split: `test_dev_roc_curve.png`."""
    return f"{split}_{kind}.png"


class ModelFolder:
    """One model folder on disk (local, or a Hub snapshot); the reads return None where a file is absent."""

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"ModelFolder({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    def has(self, name: str) -> bool:
        return self.file(name).is_file()

    def read(self, name: str) -> Optional[dict[str, Any]]:
        """One of the folder's JSON files (CONFIG, RESULTS, ARGUMENTS, SUMMARY, CALIBRATION, DOMAIN_CHECK), or None."""
        return json.loads(self.file(name).read_text()) if self.has(name) else None

    def write(self, name: str, content: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.file(name).write_text(json.dumps(content, indent=2))

    def results(self) -> Optional[Results]:
        """all_results.json, or None."""
        found = self.read(RESULTS)
        return None if found is None else Results.of(found)

    def summary(self) -> Optional[TrainingSummary]:
        """training_summary.json, or None."""
        found = self.read(SUMMARY)
        return None if found is None else TrainingSummary.of(found)

    def report(self, name: str) -> Optional[dict[str, Any]]:
        """calibration.json or adaptation.json, with today's names of the figures (`pneumo_hf.schema.current`), or None."""
        return current(self.read(name))

    def write_results(self, results: Results) -> None:
        self.write(RESULTS, results.json())

    def write_summary(self, summary: TrainingSummary) -> None:
        self.write(SUMMARY, summary.json())

    def writable(self) -> ModelFolder:
        """The folder, created if need be; refused in one sentence when it cannot be written to."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / ".write_test").touch()
            (self.path / ".write_test").unlink()
        except OSError as error:
            raise ArgumentError(f"--output_dir {self.path} is not writable ({error.strerror}); choose another folder.") from error
        return self

    def set_calibration(self, temperature: float, threshold: float, intercept: float = 0.0) -> None:
        """A new temperature (and Platt intercept) and decision threshold in config.json; the weights stay as they are."""
        config = self.read(CONFIG)
        calibrated = Calibrated.of(config)
        calibrated.calibration_temperature, calibrated.decision_threshold, calibrated.calibration_intercept = temperature, threshold, intercept
        ours = {spec.name for spec in fields(Calibrated)}
        self.write(CONFIG, {**{key: value for key, value in config.items() if key not in ours}, **calibrated.config()})

    def domain_check_tensors(self) -> dict:
        from safetensors.torch import load_file

        return load_file(str(self.file(DOMAIN_CHECK_WEIGHTS)))

    def write_domain_check(self, tensors: dict, record: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        self.path.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(self.file(DOMAIN_CHECK_WEIGHTS)))
        self.write(DOMAIN_CHECK, record)

    def copy_domain_check_to(self, other: ModelFolder) -> None:
        """The same check in `other` (an ensemble takes its first member's: the same input, the same first layers)."""
        other.path.mkdir(parents=True, exist_ok=True)
        for name in (DOMAIN_CHECK_WEIGHTS, DOMAIN_CHECK):
            if self.has(name):
                shutil.copy(self.file(name), other.file(name))

    def weights_sha256(self, digits: int = 12) -> Optional[str]:
        """The first `digits` hex digits of the SHA-256 of model.safetensors (64: all of it), or None without one;
        hashed once per version of the file (its size and modification time), as the page asks on every load."""
        weights = self.file(WEIGHTS)
        if not weights.is_file():
            return None
        stat = weights.stat()
        return _sha256(str(weights.resolve()), stat.st_size, stat.st_mtime_ns)[:digits]

    def maintainers_results(self) -> Optional[dict[str, Any]]:
        """Figures the maintainers measured on films the project never had, or None when there are none or they were
        measured on other weights (the file names the SHA-256 they were measured on)."""
        found = self.read(MAINTAINERS)
        if found is None:
            return None
        if found.get("model_sha256") != self.weights_sha256():
            logger.warning("%s was measured on weights %s, not these (%s): not shown.", self.file(MAINTAINERS), found.get("model_sha256"), self.weights_sha256())
            return None
        cut = (self.read(DOMAIN_CHECK) or {}).get("cut")
        # the domain-warning shares belong to the check they were measured with, which may have been refitted since
        return {**found, "earlier_domain_check": found.get("domain_check_cut") is not None and found["domain_check_cut"] != cut, "current_cut": cut}

    def plots(self) -> list[Path]:
        """Every plot in the card's order: the splits of PLOTTED_SPLITS, then anything else; within each, PLOT_KINDS order."""

        def rank(path: Path) -> tuple:
            split = next((i for i, prefix in enumerate(PLOTTED_SPLITS) if path.name.startswith(prefix + "_")), len(PLOTTED_SPLITS))
            kind = next((i for i, name in enumerate(PLOT_KINDS) if path.stem.endswith(name)), len(PLOT_KINDS))
            return split, kind, path.name

        return sorted(self.path.glob("*.png"), key=rank)

    def card_text(self) -> str:
        """The model card without its YAML metadata, or a line saying there is none."""
        from huggingface_hub import ModelCard

        return ModelCard.load(self.file(CARD)).text if self.has(CARD) else "This model folder has no model card."

    def copy_to(self, other: ModelFolder) -> None:
        """Everything of the model (weights byte for byte) into `other`, without a run's checkpoints and best weights."""
        shutil.copytree(self.path, other.path, dirs_exist_ok=True, ignore=shutil.ignore_patterns(CHECKPOINTS, BEST_MODEL, ".cache"))


@lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
