"""Example X-rays for the app's gallery: the films named in EXAMPLE_FILM_NAMES, copied into the package
folder from a local copy of the data set (the images are not in the repository), an image folder, or the Hub
data set's test split (fetched only when asked, after the page is up).

    pneumo-hf examples --data_dir ../shared/data/chest_xray_224/train   # once, in a clone
    from pneumo_hf.examples import find_examples
    paths, note = find_examples()                      # the films in pneumo_hf/example_films
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from .hub import DATASET_ID, hub_reachable
from .imaging import IMAGE_SUFFIXES
from .labels import LABELS

logger = logging.getLogger(__name__)

__all__ = ["EXAMPLE_FILMS", "EXAMPLE_FILM_NAMES", "copy_example_films", "find_examples", "hub_examples"]

EXAMPLE_FILMS = Path(__file__).parent / "example_films"
# From the shipped model's validation split (split seed 7 of chest_xray_224/train): never trained on, not in test_dev.
EXAMPLE_FILM_NAMES = ("PNEUMONIA/person1297_bacteria_3260.jpeg", "PNEUMONIA/person1353_virus_2333.jpeg", "PNEUMONIA/person545_bacteria_2288.jpeg")
COPY_COMMAND = "pneumo-hf examples --data_dir ../shared/data/chest_xray_224/train"


def copy_example_films(data_dir: str) -> list[Path]:
    """Copy the films of EXAMPLE_FILM_NAMES from an image folder of the data set's train split (NORMAL/ and
    PNEUMONIA/) into the package's example folder; FileNotFoundError, in one line, when one is missing."""
    sources = [Path(data_dir) / name for name in EXAMPLE_FILM_NAMES]
    missing = [str(source) for source in sources if not source.is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]} not found: --data_dir must be the Kermany et al. train split as an image folder (NORMAL/ and PNEUMONIA/).")
    targets = [EXAMPLE_FILMS / name for name in EXAMPLE_FILM_NAMES]
    for source, target in zip(sources, targets, strict=True):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return targets


def find_examples(folder: Optional[str] = None, per_class: int = 4) -> tuple[list[Path], str]:
    """Up to `per_class` images of each label from `folder` (NORMAL/ and PNEUMONIA/), by default the
    films copied into the package folder, and a line saying where they came from (or why there are none)."""
    root = Path(folder) if folder else EXAMPLE_FILMS
    paths = [p for label in LABELS for p in sorted(_images(root / label))[:per_class]]
    if not paths and root == EXAMPLE_FILMS:
        return [], f"No example films yet: copy them from a local copy of the data set with `{COPY_COMMAND}`, or set PNEUMO_EXAMPLES_DIR."
    if not paths:
        return [], f"No examples: {root} holds no NORMAL/ and PNEUMONIA/ images."
    if root == EXAMPLE_FILMS:
        return paths, "Example films from the shipped model's validation split (Kermany et al., Cell 2018; CC BY 4.0): never trained on."
    return paths, f"Examples from {root}."


def _images(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES] if folder.is_dir() else []


def hub_examples(per_class: int = 4) -> list[Path]:
    """`per_class` films of each label from the Hub data set's test split, or [] when the Hub cannot be
    reached. Slow (a download): the app calls it after its page is up."""
    if not hub_reachable():
        return []
    try:
        import datasets

        test = datasets.load_dataset(DATASET_ID, split="test")
    except Exception as error:  # any Hub or datasets failure leaves the gallery without these, not broken
        logger.warning("No examples from the Hub: %s", error)
        return []
    target = Path(tempfile.mkdtemp(prefix="pneumo_examples_"))
    paths = []
    for label_id, label in enumerate(LABELS):
        rows = test.filter(lambda row, wanted=label_id: row["label"] == wanted).select(range(per_class))
        for i, row in enumerate(rows):
            path = target / f"{label}_{i}.png"
            row["image"].save(path)
            paths.append(path)
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`pneumo-hf examples --data_dir DIR`: fill the gallery's example folder from a local copy of the data set."""
    parser = argparse.ArgumentParser(prog="pneumo-hf examples", description=main.__doc__)
    parser.add_argument("--data_dir", required=True, help="The train split as an image folder, e.g. ../shared/data/chest_xray_224/train.")
    args = parser.parse_args(argv)
    try:
        copied = copy_example_films(args.data_dir)
    except FileNotFoundError as error:
        print(f"pneumo-hf examples: {error}", file=sys.stderr)
        return 1
    print(f"copied {len(copied)} example films into {EXAMPLE_FILMS}")
    return 0
