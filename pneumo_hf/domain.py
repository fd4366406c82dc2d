"""Domain check: does a film look like the films the model was trained on (children's frontal chest X-rays)?

    pneumo-hf fit-domain-check --model pneumo_hf/default_model \
        --calibration_dir ../shared/data/chest_xray_224/test_dev --report_dir ../shared/data/adult_check

Two kinds (`--features`). For a model pretrained on ImageNet, "pooled": the Mahalanobis distance of the film's pooled
embedding (the head's input; an ensemble's first member's) to the training films' (Ledoit-Wolf covariance): a
pretrained embedding has not learnt to ignore what tells a child's chest from an adult's. For a model trained from
scratch, "first_conv": the Mahalanobis distance of low-level statistics of the film — the output of the model's first
convolution: each channel's mean and standard deviation, and its mean and mean magnitude on a grid (the finest up to
4×4 within 2,048 numbers: 4×4 for a 32-channel stem) — to those of the training films, under a covariance fitted on
training films only and shrunk towards a multiple of the identity (scikit-learn's ShrunkCovariance, 0.05). A film is
flagged when its distance is over a cut calibrated so that at most `max_flagged` of a calibration set of real
in-domain films are. What tells a child's chest from an adult's, a lateral view, a photo or a document lives in
these low-level statistics, which the classifier's pooled embedding has learnt to ignore (measured: docs/domain-check.md).
Stored in the model folder (`pneumo_hf.folder`) as `domain_check.safetensors` (the statistics) and `domain_check.json`
(the cut and what it was calibrated on); no pickle.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .folder import DOMAIN_CHECK, DOMAIN_CHECK_WEIGHTS, ModelFolder
from .models import ModelError, PneumoniaClassifier

logger = logging.getLogger(__name__)

__all__ = ["DOMAIN_WARNING", "DOMAIN_WARNINGS", "INVERTED_WARNING", "KINDS", "VERY_UNLIKE_WARNING", "DomainCheck", "crossfit_flagged", "cut_for", "default_grid", "film_statistics", "fit_domain_check", "pooled_embedding", "reference_statistics", "with_site_films"]

FEATURES = "first-conv channel mean, std, grid mean and mean magnitude (v2)"
POOLED = "pooled embedding of the first member (v1)"  # for pretrained backbones: their features did not learn to ignore an adult's chest
KINDS = {"first_conv": FEATURES, "pooled": POOLED}
# Chosen on adult_check (docs/domain-check.md): 4×4 and 5×5 flag more adult films than 3×3, and shrinkage
# 0.05 to 0.1 more than Ledoit-Wolf's own (0.001 to 0.003 here), which trusts directions training films barely vary in.
MAX_GRID, MAX_FEATURES, SHRINKAGE = 4, 2048, 0.05
DOMAIN_WARNING = (
    "This film does not look like the children's frontal chest X-rays the model was trained on "
    "(an adult, another view or body part, an edited image, or not an X-ray?): do not trust this result."
)
INVERTED_WARNING = (
    "This film looks inverted (bones dark, air light), unlike the training films: export it as the PACS shows it "
    "and upload it again; do not trust this result."
)
VERY_UNLIKE_WARNING = (
    "This image is very unlike a child's chest X-ray (a photo, a document, a screenshot or another body part?): "
    "do not trust this result."
)
DOMAIN_WARNINGS = (DOMAIN_WARNING, INVERTED_WARNING, VERY_UNLIKE_WARNING)
# Distances over this many cuts are "very unlike": no film of test_dev or the validation split lies beyond 1.7 cuts of
# the shipped check, every generated document and noise image of `pneumo-hf fit-domain-check` and 9 of 10 screenshots
# beyond 2 (docs/domain-check.md). Inverted films are told by their negative instead.
VERY_UNLIKE_CUTS = 2.0


def pooled_embedding(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """(batch, features) pooled embedding (the head's input) of a normalised batch."""
    with torch.inference_mode():
        parameter = next(model.parameters())
        features = model.forward_features(pixel_values.to(parameter.device, parameter.dtype))
        return model.forward_head(features, pre_logits=True).float().cpu()


def default_grid(conv: nn.Conv2d) -> int:
    """The finest grid up to MAX_GRID whose statistics, (2 + 2 · grid²) per channel, stay within MAX_FEATURES numbers."""
    return max([1] + [grid for grid in range(1, MAX_GRID + 1) if (2 + 2 * grid**2) * conv.out_channels <= MAX_FEATURES])


def film_statistics(conv: nn.Conv2d, pixel_values: torch.Tensor, grid: int) -> torch.Tensor:
    """(batch, (2 + 2 · grid²) · channels) statistics of the first convolution's output on a normalised batch."""
    with torch.inference_mode():
        maps = conv(pixel_values.to(conv.weight.device, conv.weight.dtype)).float()
        cells = F.adaptive_avg_pool2d(maps, grid).flatten(1)
        magnitude = F.adaptive_avg_pool2d(maps.abs(), grid).flatten(1)
        return torch.cat([maps.mean(dim=(2, 3)), maps.std(dim=(2, 3)), cells, magnitude], dim=1).cpu()


class DomainCheck:
    """Distances of films to the training films, and the cut over which a film is flagged. `module` is the first
    convolution (kind FEATURES, with `grid`) or the model whose pooled embedding is read (kind POOLED)."""

    def __init__(self, module: nn.Module, statistics: dict[str, torch.Tensor], cut: float, info: dict[str, Any], grid: Optional[int] = None, kind: str = FEATURES):
        self.module = module
        self.grid = grid
        self.kind = kind
        self.statistics = statistics  # mean, scale (z-score), location, precision (shrunk covariance)
        self.cut = cut
        self.info = info
        self._seen = threading.local()  # the last pooled embedding the model's own forward pass computed, per thread

    def watch(self) -> None:
        """For the pooled check: keep the embedding the classifier's head receives in the model's own forward pass
        (a forward pre-hook), so that `distances(..., seen=True)` need not run the backbone again."""
        if self.kind == POOLED:
            self.module.get_classifier().register_forward_pre_hook(lambda head, inputs: setattr(self._seen, "embedding", inputs[0].detach()))

    def features(self, pixel_values: torch.Tensor, seen: bool = False) -> torch.Tensor:
        """The check's statistics of a normalised batch; with `seen`, the pooled embedding the model's last forward pass in
        this thread computed for it (its first rows: the films before any test-time views), when there is one."""
        if self.kind != POOLED:
            return film_statistics(self.module, pixel_values, self.grid)
        embedding = getattr(self._seen, "embedding", None) if seen else None
        self._seen.embedding = None
        if embedding is not None and len(embedding) >= len(pixel_values):
            return embedding[: len(pixel_values)].float().cpu()
        return pooled_embedding(self.module, pixel_values)

    def distances(self, pixel_values: torch.Tensor, seen: bool = False) -> np.ndarray:
        return self.distances_of(self.features(pixel_values, seen))

    def distances_of(self, features: torch.Tensor) -> np.ndarray:
        """Mahalanobis distances of features already taken (what `features` returns, float32)."""
        z = (features.float() - self.statistics["mean"]) / self.statistics["scale"]
        centred = (z - self.statistics["location"]).double()
        return torch.einsum("bi,ij,bj->b", centred, self.statistics["precision"].double(), centred).clamp(min=0).sqrt().numpy()

    def flags(self, pixel_values: torch.Tensor) -> list[bool]:
        return [bool(distance > self.cut) for distance in self.distances(pixel_values)]

    def warning(self, distance: float, inverted_distance: Optional[float] = None) -> Optional[str]:
        """The sentence for a film at `distance` (None when it passes), naming the reason where the check can: a film
        whose negative (`inverted_distance`) passes is inverted; one far over the cut is very unlike any chest film."""
        if distance <= self.cut:
            return None
        if inverted_distance is not None and inverted_distance <= self.cut:
            return INVERTED_WARNING
        return VERY_UNLIKE_WARNING if distance > VERY_UNLIKE_CUTS * self.cut else DOMAIN_WARNING

    def save(self, folder: Path) -> None:
        """The statistics as safetensors, the symmetric precision as its upper triangle (half the bytes: 3.3 MB for a
        1,280-number embedding), and the cut and its record as JSON."""
        stored = {name: tensor.contiguous() for name, tensor in self.statistics.items() if name != "precision"}
        rows, columns = torch.triu_indices(*self.statistics["precision"].shape)
        stored["precision_upper"] = self.statistics["precision"][rows, columns].contiguous()
        ModelFolder(folder).write_domain_check(stored, {"features": self.kind, **({"grid": self.grid} if self.grid else {}), "cut": self.cut, **self.info})

    @classmethod
    def load(cls, folder: Path, classifier: PneumoniaClassifier) -> Optional[DomainCheck]:
        """The check stored in a model folder, or None (logged) when the folder has none or it does not fit the model."""
        model_folder = ModelFolder(folder)
        settings = model_folder.read(DOMAIN_CHECK)
        if settings is None or not model_folder.has(DOMAIN_CHECK_WEIGHTS):
            logger.info("%s has no domain check: films unlike the training films get no warning (fit one with `pneumo-hf fit-domain-check`).", folder)
            return None
        kind = settings.pop("features", None)
        module = classifier.adapter.first_convolution() if kind == FEATURES else classifier.adapter.embedding_model() if kind == POOLED else None
        if module is None:
            logger.warning("%s has a domain check of another kind (%s) than its model takes; it is not used (refit it with `pneumo-hf fit-domain-check`).", folder, kind)
            return None
        grid = settings.pop("grid", None)
        return cls(module, _full_precision(model_folder.domain_check_tensors()), float(settings.pop("cut")), settings, grid=int(grid) if grid else None, kind=kind)


def _full_precision(statistics: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The statistics with the precision rebuilt from its stored upper triangle (older folders store it whole)."""
    if "precision_upper" not in statistics:
        return statistics
    upper = statistics.pop("precision_upper")
    size = int(round((math.sqrt(8 * len(upper) + 1) - 1) / 2))
    rows, columns = torch.triu_indices(size, size)
    precision = torch.zeros(size, size, dtype=upper.dtype)
    precision[rows, columns] = upper
    precision[columns, rows] = upper
    return {**statistics, "precision": precision}


def cut_for(distances: np.ndarray, max_flagged: float) -> float:
    """The smallest cut that flags at most `max_flagged` of `distances` (a film is flagged when over the cut)."""
    allowed = int(np.floor(max_flagged * len(distances)))  # films that may lie over the cut
    return float(np.sort(distances)[len(distances) - allowed - 1])


def crossfit_flagged(distances: np.ndarray, halves, max_flagged: float) -> list[float]:
    """What the cut flags on films it was not set on: for each (fit, held-out) pair of `halves`
    (`pneumo_hf.data.patient_halves`), the cut set on one and counted on the other."""
    return [float(np.mean(distances[held] > cut_for(distances[fit], max_flagged))) for fit, held in halves]


def reference_statistics(reference: torch.Tensor, estimator) -> tuple[dict[str, torch.Tensor], Any]:
    """The check's statistics of a (films, features) reference: standardised, then `estimator`'s (a scikit-learn
    covariance) location and precision; and the fitted estimator."""
    reference = reference.double()
    mean, scale = reference.mean(dim=0), reference.std(dim=0) + 1e-6
    covariance = estimator.fit(((reference - mean) / scale).numpy())
    statistics = {"mean": mean.float(), "scale": scale.float(), "location": torch.from_numpy(covariance.location_).float(), "precision": torch.from_numpy(covariance.precision_).float()}
    return statistics, covariance


def with_site_films(check: DomainCheck, train: np.ndarray, site: np.ndarray, halves) -> tuple[DomainCheck, dict[str, Any]]:
    """A pooled check whose reference is the training films' embeddings plus a site's (`train`, `site`: (films,
    features)), so that the site's films are in-domain; its cut keeps the stored check's `max_flagged` share of the
    site's films, each film's distance measured with a reference fitted without its patient's half (`halves`: the
    (fit, held-out) pairs of `patient_halves`). Returns the check and what it flags, before and after."""
    from sklearn.covariance import LedoitWolf

    if check.kind != POOLED:
        raise ModelError("Only a pooled-embedding domain check can take a site's films into its reference; refit it with `pneumo-hf fit-domain-check`.")
    site_tensor = torch.from_numpy(site)
    before = float(np.mean(check.distances_of(site_tensor) > check.cut))
    held_out = np.zeros(len(site))
    for fitted, held in halves:
        check.statistics, _ = reference_statistics(torch.from_numpy(np.concatenate([train, site[fitted]])), LedoitWolf())
        held_out[held] = check.distances_of(site_tensor[held])
    max_flagged = float(check.info.get("max_flagged", 0.05))
    check.statistics, covariance = reference_statistics(torch.from_numpy(np.concatenate([train, site])), LedoitWolf())
    check.cut = cut_for(held_out, max_flagged)
    check.info = {**check.info, "train_films": len(train) + len(site), "calibration": "the site's films, cross-fitted", "calibration_films": len(site),
                  "calibration_flagged": float(np.mean(held_out > check.cut)), "shrinkage": round(float(covariance.shrinkage_), 6)}
    check.info.pop("crossfit_flagged", None)
    check.info.pop("reported", None)  # measured with the stored reference: no longer this check's
    return check, {"site_flagged_before": before, "site_flagged_after_crossfitted": float(np.mean(held_out > check.cut)), "cut": check.cut}


def fit_domain_check(
    classifier: PneumoniaClassifier,
    train_batches: Sequence[torch.Tensor],
    calibration_batches: Sequence[torch.Tensor],
    max_flagged: float = 0.05,
    calibration_name: str = "",
    grid: Optional[int] = None,
    shrinkage: float = SHRINKAGE,
    kind: str = "first_conv",
) -> DomainCheck:
    """Fit on batches of normalised training films; cut so that at most `max_flagged` of the calibration films
    (real in-domain films the model was not trained on) are flagged. `kind`: "first_conv" (the first convolution's
    statistics on a `grid`, covariance shrunk by `shrinkage`) or "pooled" (the pooled embedding, Ledoit-Wolf)."""
    from sklearn.covariance import LedoitWolf, ShrunkCovariance

    features = KINDS[kind]
    if kind == "pooled":
        module, grid = classifier.adapter.embedding_model(), None
        if module is None:
            raise ModelError(f"{classifier.architecture} has no pooled embedding to take film statistics from; use the first_conv check.")
    else:
        module = classifier.adapter.first_convolution()
        if module is None:
            raise ModelError(f"{classifier.architecture} has no first convolution to take film statistics from.")
        grid = grid or default_grid(module)
    check = DomainCheck(module, {}, cut=float("inf"), info={}, grid=grid, kind=features)
    train = torch.cat([check.features(batch) for batch in train_batches]).double()
    check.statistics, covariance = reference_statistics(train, LedoitWolf() if kind == "pooled" else ShrunkCovariance(shrinkage=shrinkage))
    calibration = np.concatenate([check.distances(batch) for batch in calibration_batches])
    check.cut = cut_for(calibration, max_flagged)
    check.info = {
        "train_films": len(train),
        "calibration": calibration_name,
        "calibration_films": len(calibration),
        "max_flagged": max_flagged,
        "calibration_flagged": float(np.mean(calibration > check.cut)),
        "shrinkage": round(float(covariance.shrinkage_ if kind == "pooled" else shrinkage), 6),
    }
    return check
