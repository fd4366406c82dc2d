"""The one Dataset that decodes films in a DataLoader's workers and goes on past the unreadable ones: training and
evaluation (`pneumo_hf.data.skipping_unreadable`), the film cache and the batch command all read films through it.

    from pneumo_hf.films import Film, FilmDataset
    loader = DataLoader(FilmDataset([Film("a.dcm", "a.dcm")], transform), collate_fn=list)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch

from .imaging import ImageError, load_image

__all__ = ["Film", "FilmDataset"]


@dataclass(frozen=True)
class Film:
    """One film: `key` names it (the batch command's `path` column); the file is `path`, or row `index` of the
    undecoded `datasets.Dataset` `dataset` (its `image` column's bytes or path)."""

    key: str
    path: Optional[str] = None
    dataset: Any = None
    index: int = -1

    def read(self):
        """What `pneumo_hf.imaging.load_image` takes: a path, or the row's bytes."""
        if self.dataset is None:
            return self.path
        image = self.dataset[self.index]["image"]
        return image.get("bytes") or image["path"]


class FilmDataset(torch.utils.data.Dataset):
    """Films decoded by `load_image` and turned into tensors by `transform`. Item i is {"index", "key",
    "pixel_values"} (with "labels" when `labels` are given, and what `extras(image)` adds), or {"index", "key",
    "error", "source"} for a film that cannot be read: one bad film never stops a loader. `any_error`: catch every exception
    (a list naming a missing file, a damaged data set row), not only unreadable images."""

    def __init__(self, films: Sequence[Film], transform: Callable, labels: Optional[Sequence[int]] = None, extras: Optional[Callable[[Any], dict]] = None, any_error: bool = False):
        self.films, self.transform, self.labels, self.extras, self.any_error = films, transform, labels, extras, any_error

    def __len__(self) -> int:
        return len(self.films)

    def __getitem__(self, index: int) -> dict[str, Any]:
        film = self.films[index]
        try:
            source = film.read()
            image = load_image(source)
        except ImageError as error:
            return {"index": index, "key": film.key, "error": str(error), "source": source if isinstance(source, str) else film.key}
        except Exception as error:
            if not self.any_error:
                raise
            return {"index": index, "key": film.key, "error": f"{type(error).__name__}: {error}", "source": film.key}
        item = {"index": index, "key": film.key, "pixel_values": self.transform(image)}
        if self.labels is not None:
            item["labels"] = self.labels[index]
        if self.extras is not None:
            item.update(self.extras(image))
        return item
