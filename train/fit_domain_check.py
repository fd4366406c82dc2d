"""Fit the domain check of a model folder on its own training films and calibrate its cut (see pneumo_hf.domain).

    python train/fit_domain_check.py --model pneumo_hf/default_model --calibration_dir ../shared/data/chest_xray_224/test_dev \
        --pool_validation --max_flagged 0.03 --report_dir ../shared/data/adult_check

The training films are the run's own train split, rebuilt from the folder's training_args.json (never its
validation split); the cut lets at most --max_flagged of the calibration films (the --calibration_dir folders,
with --pool_validation the run's validation split too; default: that split alone) be flagged. What the cut is worth
on films it was not set on is estimated by a patient-grouped cross-fit of the calibration films (set on one half,
counted on the other). Prints the share flagged on the calibration films, on each --report_dir, on the
run's validation split and on generated non-X-rays (noise, colour photos, documents, screenshots, inverted and heavily cropped films),
and stores those shares in domain_check.json for the model card. Fit an ensemble's first member before train/ensemble.py:
the ensemble takes that member's check, shares and all, into its card.
"""

import argparse
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps

from pneumo_hf.data import patient_halves, patient_id
from pneumo_hf.domain import SHRINKAGE, crossfit_flagged, fit_domain_check
from pneumo_hf.evaluation import run_splits
from pneumo_hf.folder import ARGUMENTS, ModelFolder
from pneumo_hf.hub import readable_split
from pneumo_hf.imaging import IMAGE_SUFFIXES, ImageError, load_image
from pneumo_hf.labels import LABEL2ID
from pneumo_hf.models import PneumoniaClassifier, resolve_model_folder
from pneumo_hf.transforms import build_transform

logger = logging.getLogger("fit_domain_check")


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


def main(argv=None) -> int:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A model folder written by train/train.py (its training_args.json names its data).")
    parser.add_argument("--calibration_dir", nargs="*", default=[], help="Folders of real in-domain films the model never trained on (NORMAL/ and PNEUMONIA/).")
    parser.add_argument("--pool_validation", action="store_true", help="Calibrate on the run's validation split as well as the --calibration_dir films.")
    parser.add_argument("--crossfit_repeats", type=int, default=10, help="Patient-grouped halvings of the calibration films for the cross-fitted share.")
    parser.add_argument("--report_dir", nargs="*", default=[], help="Folders whose flagged share is printed (e.g. adult films).")
    parser.add_argument("--max_flagged", type=float, default=0.05)
    parser.add_argument("--max_train_films", type=int, help="Fit on this many training films, drawn with --seed (default: all of them).")
    parser.add_argument("--features", choices=["first_conv", "pooled"], default="first_conv", help="What the check measures: the first convolution's statistics, or the pooled embedding (for a pretrained backbone; Ledoit-Wolf covariance).")
    parser.add_argument("--grid", type=int, help="Cells a side of the grid statistics (default: the finest up to 4 within 2,048 numbers).")
    parser.add_argument("--shrinkage", type=float, default=SHRINKAGE, help="Of the covariance towards a multiple of the identity, in [0, 1].")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if (args.grid is not None and args.grid < 1) or not 0.0 <= args.shrinkage <= 1.0:
        parser.error(f"--grid {args.grid} --shrinkage {args.shrinkage}: give a grid of at least 1 and a shrinkage between 0 and 1.")
    folder = resolve_model_folder(args.model)
    classifier = PneumoniaClassifier.from_pretrained(folder).eval()
    transform = build_transform(classifier.data_config)
    train_split, validation_split = run_splits(ModelFolder(folder).read(ARGUMENTS))
    picked = np.random.default_rng(args.seed).permutation(len(train_split))[: args.max_train_films]
    train_films = [row["image"]["bytes"] or row["image"]["path"] for row in train_split.select(sorted(picked))]
    validation_films = [row["image"]["bytes"] or row["image"]["path"] for row in validation_split]
    calibration, groups, labels, names = [], [], [], [readable_split(calibration_dir) for calibration_dir in args.calibration_dir]
    for calibration_dir in args.calibration_dir:
        films = folder_films(calibration_dir)
        calibration += films
        groups += [patient_id(film) for film in films]
        labels += [LABEL2ID.get(Path(film).parent.name, 0) for film in films]
    if args.pool_validation or not args.calibration_dir:
        calibration += validation_films
        groups += list(validation_split["patient"])
        labels += list(validation_split["label"])
        names.append("the run's validation split")
    name = " + ".join(names)
    check = fit_domain_check(classifier, list(batches(train_films, transform)), list(batches(calibration, transform)), args.max_flagged, name, args.grid, args.shrinkage, args.features)
    measured = f"{check.grid}x{check.grid} grid" if check.grid else f"pooled embedding, shrinkage {check.info['shrinkage']:.4f}"
    print(f"fitted on {check.info['train_films']} training films, {measured}; cut {check.cut:.2f}")
    print(f"{'films':<48}{'n':>5}{'flagged':>9}")
    print(f"{'calibration: ' + name:<48}{check.info['calibration_films']:>5}{check.info['calibration_flagged']:>9.3f}")
    distances = np.concatenate([check.distances(batch) for batch in batches(calibration, transform)])
    if len(distances) == len(groups) and args.crossfit_repeats > 0:
        shares = crossfit_flagged(distances, patient_halves(labels, groups, args.crossfit_repeats, args.seed), args.max_flagged)
        check.info["crossfit_flagged"] = {"mean": float(np.mean(shares)), "min": float(np.min(shares)), "max": float(np.max(shares)), "halves": len(shares)}
        print(f"{'cross-fit: cut on one half, counted on the other':<48}{len(distances) // 2:>5}{np.mean(shares):>9.3f}  (min {np.min(shares):.3f}, max {np.max(shares):.3f}, {len(shares)} halves)")
    reports = {readable_split(report): folder_films(report) for report in [*args.calibration_dir, *args.report_dir]}
    reports["the run's validation split"] = validation_films
    reports.update({"generated: " + kind: images for kind, images in non_xrays(train_films).items()})
    check.info["reported"] = {}  # stored with the check: the model card (train/ensemble.py) quotes these shares
    for report, sources in reports.items():
        flags = [flag for batch in batches(sources, transform) for flag in check.flags(batch)]
        share = float(np.mean(flags)) if flags else float("nan")
        if flags:
            check.info["reported"][report] = {"films": len(flags), "flagged": share}
        print(f"{report:<48}{len(flags):>5}{share:>9.3f}")
    check.save(folder)
    print(f"written to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
