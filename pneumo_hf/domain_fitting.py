"""Fit the domain check of a model folder on its own training films, calibrate its cut and measure what it flags
(`pneumo_hf.domain` holds the check itself).

    pneumo-hf fit-domain-check --model pneumo_hf/default_model --calibration_dir ../shared/data/chest_xray_224/test_dev \
        --pool_validation --max_flagged 0.03 --report_dir ../shared/data/adult_check
    from pneumo_hf.domain_fitting import fit_folder_check
    check = fit_folder_check("runs/b0", calibration_dirs=["data/test"], report_dirs=["data/adults"])

The training films are the run's own train split, rebuilt from the folder's training_args.json (never its validation
split); the cut lets at most `max_flagged` of the calibration films (the `calibration_dirs`, with `pool_validation`
the run's validation split too; default: that split alone) be flagged. What the cut is worth on films it was not set
on is estimated by a patient-grouped cross-fit of the calibration films (set on one half, counted on the other). The
shares flagged on the calibration films, each report folder, the run's validation split and generated non-X-rays
(noise, colour photos, documents, screenshots, inverted and heavily cropped films) are stored in domain_check.json
for the model card. Fit an ensemble's first member before `pneumo-hf ensemble`: the ensemble takes that member's
check, shares and all, into its card.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps

from .card import readable_split
from .data import patient_halves, patient_id
from .domain import SHRINKAGE, DomainCheck, crossfit_flagged, fit_domain_check
from .errors import ArgumentError
from .evaluation import run_splits
from .folder import ARGUMENTS, ModelFolder
from .imaging import IMAGE_SUFFIXES, ImageError, load_image
from .labels import LABEL2ID
from .models import PneumoniaClassifier, resolve_model_folder
from .transforms import build_transform

logger = logging.getLogger(__name__)

__all__ = ["fit_folder_check", "non_xrays"]


def batches(sources: Sequence, transform, size: int = 64) -> Iterator[torch.Tensor]:
    for start in range(0, len(sources), size):
        films = []
        for source in sources[start : start + size]:
            try:
                films.append(transform(load_image(source)))
            except ImageError as error:
                logger.warning("skipped %s: %s", source, error)
        if films:
            yield torch.stack(films)


def folder_films(folder: str) -> list[str]:
    return sorted(str(p) for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def non_xrays(films: Sequence[str], seed: int = 0) -> dict[str, list[Image.Image]]:
    """Inputs the check must flag, made here: 10 of each kind."""
    rng = np.random.default_rng(seed)
    kinds: dict[str, list[Image.Image]] = {name: [] for name in ("noise", "colour photo", "document", "screenshot", "inverted film", "cropped film")}
    for i in range(10):
        kinds["noise"].append(Image.fromarray(rng.integers(0, 256, (224, 224), dtype=np.uint8)))
        blobs = np.clip(rng.normal(0, 1, (7, 7, 3)).repeat(32, 0).repeat(32, 1) * 60 + 128, 0, 255).astype(np.uint8)
        kinds["colour photo"].append(Image.fromarray(blobs))
        page = Image.new("RGB", (224, 300), "white")
        draw = ImageDraw.Draw(page)
        for line in range(12):
            draw.text((12, 12 + 22 * line), f"Report {i}: findings line {line} " * 2, fill="black")
        kinds["document"].append(page)
        screen = Image.new("RGB", (320, 200), (rng.integers(200, 256),) * 3)
        draw = ImageDraw.Draw(screen)
        for _ in range(6):
            x, y = int(rng.integers(0, 260)), int(rng.integers(0, 160))
            draw.rectangle((x, y, x + 60, y + 30), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        kinds["screenshot"].append(screen)
        film = load_image(films[(i * 7) % len(films)])
        kinds["inverted film"].append(ImageOps.invert(film))
        kinds["cropped film"].append(film.crop((film.width // 3, film.height // 3, 2 * film.width // 3, 2 * film.height // 3)))
    return kinds


def fit_folder_check(
    model: str,
    calibration_dirs: Sequence[str] = (),
    pool_validation: bool = False,
    crossfit_repeats: int = 10,
    report_dirs: Sequence[str] = (),
    max_flagged: float = 0.05,
    max_train_films: Optional[int] = None,
    features: str = "first_conv",
    grid: Optional[int] = None,
    shrinkage: float = SHRINKAGE,
    seed: int = 0,
) -> DomainCheck:
    """Fit, measure and save the domain check of the model folder `model`; returns it, its measured shares in
    `check.info` ("calibration_flagged", "crossfit_flagged", "reported": {name: {"films", "flagged"}})."""
    if (grid is not None and grid < 1) or not 0.0 <= shrinkage <= 1.0:
        raise ArgumentError(f"`grid` {grid}, `shrinkage` {shrinkage}: give a grid of at least 1 and a shrinkage between 0 and 1.")
    folder = resolve_model_folder(model)
    classifier = PneumoniaClassifier.from_pretrained(folder).eval()
    transform = build_transform(classifier.data_config)
    train_split, validation_split = run_splits(ModelFolder(folder).read(ARGUMENTS))
    picked = np.random.default_rng(seed).permutation(len(train_split))[:max_train_films]
    train_films = [row["image"]["bytes"] or row["image"]["path"] for row in train_split.select(sorted(picked))]
    validation_films = [row["image"]["bytes"] or row["image"]["path"] for row in validation_split]
    calibration, groups, labels, names = [], [], [], [readable_split(calibration_dir) for calibration_dir in calibration_dirs]
    for calibration_dir in calibration_dirs:
        films = folder_films(calibration_dir)
        calibration += films
        groups += [patient_id(film) for film in films]
        labels += [LABEL2ID.get(Path(film).parent.name, 0) for film in films]
    if pool_validation or not calibration_dirs:
        calibration += validation_films
        groups += list(validation_split["patient"])
        labels += list(validation_split["label"])
        names.append("the run's validation split")
    check = fit_domain_check(classifier, list(batches(train_films, transform)), list(batches(calibration, transform)), max_flagged, " + ".join(names), grid, shrinkage, features)
    distances = np.concatenate([check.distances(batch) for batch in batches(calibration, transform)])
    if len(distances) == len(groups) and crossfit_repeats > 0:
        shares = crossfit_flagged(distances, patient_halves(labels, groups, crossfit_repeats, seed), max_flagged)
        check.info["crossfit_flagged"] = {"mean": float(np.mean(shares)), "min": float(np.min(shares)), "max": float(np.max(shares)), "halves": len(shares)}
    reports = {readable_split(report): folder_films(report) for report in [*calibration_dirs, *report_dirs]}
    reports["the run's validation split"] = validation_films
    reports.update({"generated: " + kind: images for kind, images in non_xrays(train_films).items()})
    check.info["reported"] = {}  # stored with the check: the model card quotes these shares
    for report, sources in reports.items():
        flags = [flag for batch in batches(sources, transform) for flag in check.flags(batch)]
        if flags:
            check.info["reported"][report] = {"films": len(flags), "flagged": float(np.mean(flags))}
    check.save(folder)
    return check
