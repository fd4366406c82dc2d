"""Decode once, augment batches: training films decoded a single time into uint8 grey arrays at the model's input size,
in a memory-mapped .npy file keyed by the source files and the preprocessing, then augmented as whole batches of
tensors on the device (`pneumo_hf.augmentation.BatchAugment`: kornia, each film its own draw). What `train/train.py`
does unless `--no_film_cache` (`training_loaders` chooses).

    from pneumo_hf.film_cache import cached_films
    films = cached_films(train_split, classifier.data_config, cache_dir="~/.cache/pneumo_hf/films")   # a torch Dataset

The cached pixels are exactly those `pneumo_hf.transforms.build_transform` makes before its augmentation (grey, resized
with the model's interpolation, antialiased): validation from the cache equals validation from the JPEGs, and the
model folder's preprocessing does not change.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torchvision.transforms import InterpolationMode, v2

from .augmentation import Augmentation, BatchAugment
from .data import collate, dataset_films, skipping_unreadable
from .films import FilmDataset
from .models import PneumoniaClassifier
from .transforms import build_transform, normalise

logger = logging.getLogger(__name__)

__all__ = ["CACHE_VERSION", "CachedFilms", "cached_films", "default_cache_dir", "training_loaders"]

CACHE_VERSION = "grey-uint8-v1"  # change it when what is stored changes: every key changes with it


def default_cache_dir() -> Path:
    """PNEUMO_CACHE_DIR, else ~/.cache/pneumo_hf/films."""
    return Path(os.environ.get("PNEUMO_CACHE_DIR", Path.home() / ".cache" / "pneumo_hf" / "films")).expanduser()


def _grey_resize(data_config: dict[str, Any]) -> v2.Compose:
    """The first steps of build_transform, on one channel: what the cache stores."""
    height, width = data_config["input_size"][-2:]
    interpolation = InterpolationMode(data_config.get("interpolation", "bilinear"))
    return v2.Compose([v2.ToImage(), v2.Grayscale(num_output_channels=1), v2.Resize((height, width), interpolation=interpolation, antialias=True)])


def _source_key(image: dict[str, Any]) -> str:
    """A film's identity: its bytes' hash when the row holds bytes, else its path, size and modification time."""
    if image.get("bytes"):
        return hashlib.sha1(image["bytes"]).hexdigest()
    stat = os.stat(image["path"])
    return f"{image['path']}:{stat.st_size}:{stat.st_mtime_ns}"


class _GreyArray:
    """What the cache stores of one decoded film: `_grey_resize`'s result as an (H, W) uint8 array."""

    def __init__(self, data_config: dict[str, Any]):
        self.transform = _grey_resize(data_config)

    def __call__(self, image) -> np.ndarray:
        return self.transform(image)[0].numpy()


def cached_films(dataset, data_config: dict[str, Any], cache_dir: Union[str, Path, None] = None, train: bool = False, num_workers: int = 2) -> CachedFilms:
    """The rows of an undecoded `datasets.Dataset` (columns `image`, `label`) as a torch Dataset over the cache,
    decoding what is not cached yet. Two runs may share a cache folder: each writes its own temporary files and
    renames them into place, and a file is only read once its `.ok` companion exists."""
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    height, width = data_config["input_size"][-2:]
    key = hashlib.sha256("\n".join([CACHE_VERSION, f"{height}x{width}", str(data_config.get("interpolation")), *map(_source_key, dataset["image"])]).encode()).hexdigest()[:20]
    pixels_path, ok_path = folder / f"films-{key}.npy", folder / f"films-{key}.ok.npy"
    if not ok_path.is_file():
        _build(FilmDataset(dataset_films(dataset), _GreyArray(data_config)), (height, width), pixels_path, ok_path, num_workers)
    else:
        logger.info("Film cache %s: %d films decoded before, reused.", pixels_path, len(dataset))
    return CachedFilms(np.load(pixels_path, mmap_mode="r"), np.load(ok_path), dataset["label"], data_config, train)


def _build(films: FilmDataset, size: tuple[int, int], pixels_path: Path, ok_path: Path, num_workers: int) -> None:
    suffix = f".tmp-{os.getpid()}.npy"
    pixels_tmp, ok_tmp = pixels_path.with_name(pixels_path.stem + suffix), ok_path.with_name(ok_path.stem + suffix)
    pixels = np.lib.format.open_memmap(pixels_tmp, mode="w+", dtype=np.uint8, shape=(len(films), *size))
    ok = np.zeros(len(films), dtype=bool)
    for batch in torch.utils.data.DataLoader(films, batch_size=64, num_workers=num_workers, collate_fn=list):
        for item in batch:
            if "error" in item:
                logger.warning("Skipping unreadable training image %s: %s", item["source"], item["error"])
            else:
                pixels[item["index"]], ok[item["index"]] = item["pixel_values"], True
    pixels.flush()
    del pixels
    np.save(ok_tmp, ok)
    os.replace(pixels_tmp, pixels_path)
    os.replace(ok_tmp, ok_path)  # last: its presence says the pixels are complete
    logger.info("Film cache %s: %d films decoded once (%d unreadable).", pixels_path, len(films), int((~ok).sum()))


class CachedFilms(torch.utils.data.Dataset):
    """Cached films: for training, uint8 (1, H, W) to augment as a batch (`BatchAugment`); else the model's input
    (3, H, W), normalised as build_transform normalises. A row that could not be decoded yields its error, as
    `pneumo_hf.films.FilmDataset` does (`collate` counts it)."""

    def __init__(self, pixels: np.ndarray, ok: np.ndarray, labels, data_config: dict[str, Any], train: bool):
        self.pixels, self.ok, self.labels, self.train = pixels, ok, list(labels), train
        self.mean = torch.tensor(data_config["mean"]).view(-1, 1, 1)
        self.std = torch.tensor(data_config["std"]).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not self.ok[index]:
            return {"index": index, "error": "could not be decoded when the film cache was built", "source": f"row {index}"}
        film = torch.from_numpy(np.array(self.pixels[index]))[None]
        if not self.train:
            film = normalise(film.expand(3, -1, -1).float() / 255.0, self.mean, self.std)
        return {"pixel_values": film, "labels": self.labels[index]}


def training_loaders(
    classifier: PneumoniaClassifier, train_set, validation_set, *, batch_size: int, eval_batch_size: int, num_workers: int = 0, film_cache: bool = True,
    cache_dir: Optional[str] = None, augmentation: Augmentation = Augmentation(),
):
    """The training and validation loaders, and the batch augmentation that goes with the first (None when the loader
    augments film by film): over the film cache (in `cache_dir`) by default, else decoding JPEGs in workers every epoch."""
    loader_kwargs = {"collate_fn": collate, "num_workers": num_workers, "persistent_workers": num_workers > 0}
    if film_cache:
        train_films, validation_films = (
            cached_films(split, classifier.data_config, cache_dir, train=train, num_workers=num_workers) for split, train in ((train_set, True), (validation_set, False))
        )
        augment = BatchAugment(classifier.data_config, augmentation.aug_strength, augmentation.intensity_aug, augmentation.random_erasing)
        train_loader = torch.utils.data.DataLoader(train_films, batch_size=batch_size, shuffle=True, collate_fn=collate)  # slicing a memmap needs no workers
        return train_loader, torch.utils.data.DataLoader(validation_films, batch_size=eval_batch_size, collate_fn=collate), augment
    transform = build_transform(classifier.data_config, train=True, aug_strength=augmentation.aug_strength, random_erasing=augmentation.random_erasing, intensity_aug=augmentation.intensity_aug)
    train_loader = torch.utils.data.DataLoader(skipping_unreadable(train_set, transform), batch_size=batch_size, shuffle=True, **loader_kwargs)
    validation_loader = torch.utils.data.DataLoader(skipping_unreadable(validation_set, build_transform(classifier.data_config)), batch_size=eval_batch_size, **loader_kwargs)
    return train_loader, validation_loader, None
