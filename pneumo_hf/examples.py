"""Example X-rays for the app's gallery: the eight credited films in pneumo_hf/example_films (from the shipped model's
validation split), an image folder (PNEUMO_EXAMPLES_DIR), or the Hub data set's test split (fetched only when
asked, after the page is up).

    from pneumo_hf.examples import find_examples
    paths, note = find_examples()                      # the films in pneumo_hf/example_films
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Optional

from .hub import DATASET_ID, hub_reachable
from .imaging import IMAGE_SUFFIXES
from .labels import LABELS

logger = logging.getLogger(__name__)

__all__ = ["EXAMPLE_FILMS", "find_examples", "hub_examples"]

EXAMPLE_FILMS = Path(__file__).parent / "example_films"  # README.md there credits them


def find_examples(folder: Optional[str] = None, per_class: int = 4) -> tuple[list[Path], str]:
    """Up to `per_class` images of each label from `folder` (NORMAL/ and PNEUMONIA/), by default the package's
    example films, and a line saying where they came from (or why there are none)."""
    root = Path(folder) if folder else EXAMPLE_FILMS
    paths = [p for label in LABELS for p in sorted(_images(root / label))[:per_class]]
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
