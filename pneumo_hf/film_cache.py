"""Decode once, augment batches: training films decoded a single time into uint8 grey arrays at the model's input size,
in a memory-mapped .npy file keyed by the source files and the preprocessing, then augmented as whole batches of
tensors on the device (kornia, each film its own draw). What `train/train.py` does unless `--no_film_cache`.

    from pneumo_hf.film_cache import cached_films
    films = cached_films(train_split, classifier.data_config, cache_dir="~/.cache/pneumo_hf/films")   # a torch Dataset

The cached pixels are exactly those `pneumo_hf.transforms.build_transform` makes before its augmentation (grey, resized
with the model's interpolation, antialiased): validation from the cache equals validation from the JPEGs, and the
model folder's preprocessing does not change.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn
from torchvision.transforms import InterpolationMode, v2

from .imaging import ImageError, load_image

logger = logging.getLogger(__name__)

__all__ = ["CACHE_VERSION", "BatchAugment", "CachedFilms", "cached_films", "default_cache_dir"]

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


class _Decode(torch.utils.data.Dataset):
    def __init__(self, images: list, transform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = self.images[index]
        try:
            return index, self.transform(load_image(image["bytes"] or image["path"]))[0].numpy()
        except ImageError as error:
            logger.warning("Skipping unreadable training image %s: %s", image.get("path") or f"row {index}", error)
            return index, None


def cached_films(dataset, data_config: dict[str, Any], cache_dir: Union[str, Path, None] = None, train: bool = False, num_workers: int = 2) -> CachedFilms:
    """The rows of an undecoded `datasets.Dataset` (columns `image`, `label`) as a torch Dataset over the cache,
    decoding what is not cached yet. Two runs may share a cache folder: each writes its own temporary files and
    renames them into place, and a file is only read once its `.ok` companion exists."""
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    images = dataset["image"]
    height, width = data_config["input_size"][-2:]
    key = hashlib.sha256("\n".join([CACHE_VERSION, f"{height}x{width}", str(data_config.get("interpolation")), *map(_source_key, images)]).encode()).hexdigest()[:20]
    pixels_path, ok_path = folder / f"films-{key}.npy", folder / f"films-{key}.ok.npy"
    if not ok_path.is_file():
        _build(images, _grey_resize(data_config), (height, width), pixels_path, ok_path, num_workers)
    else:
        logger.info("Film cache %s: %d films decoded before, reused.", pixels_path, len(images))
    return CachedFilms(np.load(pixels_path, mmap_mode="r"), np.load(ok_path), dataset["label"], data_config, train)


def _build(images: list, transform, size: tuple[int, int], pixels_path: Path, ok_path: Path, num_workers: int) -> None:
    suffix = f".tmp-{os.getpid()}.npy"
    pixels_tmp, ok_tmp = pixels_path.with_name(pixels_path.stem + suffix), ok_path.with_name(ok_path.stem + suffix)
    pixels = np.lib.format.open_memmap(pixels_tmp, mode="w+", dtype=np.uint8, shape=(len(images), *size))
    ok = np.zeros(len(images), dtype=bool)
    loader = torch.utils.data.DataLoader(_Decode(images, transform), batch_size=64, num_workers=num_workers, collate_fn=list)
    for batch in loader:
        for index, film in batch:
            if film is not None:
                pixels[index], ok[index] = film, True
    pixels.flush()
    del pixels
    np.save(ok_tmp, ok)
    os.replace(pixels_tmp, pixels_path)
    os.replace(ok_tmp, ok_path)  # last: its presence says the pixels are complete
    logger.info("Film cache %s: %d films decoded once (%d unreadable).", pixels_path, len(images), int((~ok).sum()))


class CachedFilms(torch.utils.data.Dataset):
    """Cached films: for training, uint8 (1, H, W) to augment as a batch (`BatchAugment`); else the model's input
    (3, H, W), normalised as build_transform normalises. Rows that could not be decoded yield None (`collate` counts them)."""

    def __init__(self, pixels: np.ndarray, ok: np.ndarray, labels, data_config: dict[str, Any], train: bool):
        self.pixels, self.ok, self.labels, self.train = pixels, ok, list(labels), train
        self.mean = torch.tensor(data_config["mean"]).view(-1, 1, 1)
        self.std = torch.tensor(data_config["std"]).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Optional[dict[str, Any]]:
        if not self.ok[index]:
            return None
        film = torch.from_numpy(np.array(self.pixels[index]))[None]
        if not self.train:
            film = (film.expand(3, -1, -1).float() / 255.0 - self.mean) / self.std
        return {"pixel_values": film, "labels": self.labels[index]}


class BatchAugment(nn.Module):
    """The training augmentation of build_transform, drawn per film on a whole uint8 batch (B, 1, H, W) with kornia:
    rotation, shift and scale, brightness and contrast (`aug_strength`), random gamma, blur and noise
    (`intensity_aug`), random erasing with noise; then three channels, normalised. Same distributions, one batch call."""

    def __init__(self, data_config: dict[str, Any], aug_strength: float = 1.0, intensity_aug: float = 0.0, random_erasing: float = 0.0):
        super().__init__()
        import kornia.augmentation as K

        geometric, noise = [], []
        if aug_strength > 0:
            s = aug_strength
            geometric += [
                K.RandomAffine(degrees=10 * s, translate=(0.06 * s, 0.06 * s), scale=(1 - 0.1 * s, 1 + 0.1 * s), p=1.0),
                K.ColorJitter(brightness=0.2 * s, contrast=0.2 * s, p=1.0),
            ]
        if intensity_aug > 0:
            s = intensity_aug
            geometric += [K.RandomGamma(gamma=(math.exp(-0.4 * s), math.exp(0.4 * s)), p=0.5), K.RandomGaussianBlur(kernel_size=5, sigma=(0.1, max(0.1, s)), p=1 / 3)]
            noise.append(K.RandomGaussianNoise(std=0.03 * s, p=1 / 3))
        self.geometric = K.AugmentationSequential(*geometric) if geometric else None
        self.noise = K.AugmentationSequential(*noise) if noise else None
        self.erasing = K.RandomErasing(p=random_erasing, value=0.0) if random_erasing > 0 else None
        self.register_buffer("mean", torch.tensor(data_config["mean"]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(data_config["std"]).view(1, -1, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, films: torch.Tensor) -> torch.Tensor:
        x = films.float() / 255.0
        if self.geometric is not None:
            x = self.geometric(x).clamp(0.0, 1.0)
        if self.noise is not None:
            x = self.noise(x)
        x = (x.expand(-1, 3, -1, -1) - self.mean) / self.std  # buffers: on the device with the module
        if self.erasing is not None:  # timm's --remode pixel: the erased rectangle holds normal noise
            erased = self.erasing(torch.ones_like(x[:, :1])) == 0
            x = torch.where(erased, torch.randn_like(x), x)
        return x
