"""Example X-rays for the app's gallery: from an image folder (PNEUMO_EXAMPLES_DIR) or the Hub data set's test split.

    from pneumo_hf.examples import find_examples
    paths, note = find_examples("../shared/data/chest_xray_224/train", per_class=4)
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Optional

from .hub import DATASET_ID, hub_reachable
from .labels import LABELS

logger = logging.getLogger(__name__)

__all__ = ["find_examples"]

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".dcm"}


def find_examples(folder: Optional[str], per_class: int = 4) -> tuple[list[Path], str]:
    """Up to `per_class` images of each label, and a line saying where they came from (or why there are none)."""
    if folder:
        root = Path(folder)
        paths = [p for label in LABELS for p in sorted(_images(root / label))[:per_class]]
        if paths:
            return paths, f"Examples from {root}."
        return [], f"No examples: PNEUMO_EXAMPLES_DIR={folder} holds no NORMAL/ and PNEUMONIA/ images."
    if hub_reachable():
        try:
            return _from_hub(per_class), f"Examples from the test split of {DATASET_ID}."
        except Exception as error:  # any Hub or datasets failure leaves the app without examples, not broken
            logger.warning("No examples from the Hub: %s", error)
    return [], "No examples available: set PNEUMO_EXAMPLES_DIR to an image folder with NORMAL/ and PNEUMONIA/ subfolders."


def _images(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES] if folder.is_dir() else []


def _from_hub(per_class: int) -> list[Path]:
    import datasets

    test = datasets.load_dataset(DATASET_ID, split="test")
    target = Path(tempfile.mkdtemp(prefix="pneumo_examples_"))
    paths = []
    for label_id, label in enumerate(LABELS):
        rows = test.filter(lambda row: row["label"] == label_id).select(range(per_class))
        for i, row in enumerate(rows):
            path = target / f"{label}_{i}.png"
            row["image"].save(path)
            paths.append(path)
    return paths
