"""Decode once, augment batches: the cache holds what build_transform makes, is reused and rebuilt when it should be,
and the batch augmentation draws per film."""

import os

import numpy as np
import pytest
import torch
from conftest import tiny_args, write_image_folder

from pneumo_hf.augmentation import BatchAugment
from pneumo_hf.data import collate, load_evaluation_set, skipping_unreadable
from pneumo_hf.film_cache import cached_films
from pneumo_hf.models import build_classifier
from pneumo_hf.transforms import build_transform


@pytest.fixture
def films(tmp_path):
    return load_evaluation_set(data_dir=str(write_image_folder(tmp_path / "films", per_class=6, size=(70, 58))))


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0"])  # bilinear and bicubic resizing
def test_cached_films_are_the_pixels_build_transform_gives(films, tmp_path, name):
    data_config = build_classifier(name, image_size=48).data_config
    cached = cached_films(films, data_config, tmp_path / "cache")
    decoded = skipping_unreadable(films, build_transform(data_config))
    for index in range(len(films)):
        assert torch.allclose(cached[index]["pixel_values"], decoded[index]["pixel_values"], atol=1e-5)
        assert cached[index]["labels"] == decoded[index]["labels"]
    assert cached_films(films, data_config, tmp_path / "cache", train=True)[0]["pixel_values"].dtype == torch.uint8


def test_the_cache_is_reused_and_rebuilt_when_a_film_changes(films, tmp_path, monkeypatch):
    data_config = build_classifier("resnet18", image_size=32).data_config
    cached_films(films, data_config, tmp_path / "cache")
    written = sorted(path.name for path in (tmp_path / "cache").iterdir())
    assert len(written) == 2 and not any(".tmp-" in name for name in written)  # the pixels and their .ok mark, renamed into place
    monkeypatch.setattr("pneumo_hf.film_cache._build", lambda *args: pytest.fail("decoded again"))
    cached_films(films, data_config, tmp_path / "cache")  # reused
    monkeypatch.undo()
    changed = films[0]["image"]["path"]
    os.utime(changed, ns=(os.stat(changed).st_atime_ns, os.stat(changed).st_mtime_ns + 10**9))
    cached_films(films, data_config, tmp_path / "cache")
    cached_films(films, build_classifier("resnet18", image_size=40).data_config, tmp_path / "cache")  # another preprocessing
    assert len(list((tmp_path / "cache").iterdir())) == 6


def test_an_unreadable_film_is_skipped_and_counted(films, tmp_path):
    with open(films[1]["image"]["path"], "wb") as file:
        file.write(b"not a film")
    cached = cached_films(films, build_classifier("resnet18", image_size=32).data_config, tmp_path / "cache")
    assert "error" in cached[1] and collate([cached[0], cached[1]])["n_skipped"] == 1
    decoded = skipping_unreadable(films, build_transform(build_classifier("resnet18", image_size=32).data_config))
    assert "pixel_values" not in decoded[1] and decoded[1]["source"] == films[1]["image"]["path"]  # the film-by-film path names the file
    assert collate([decoded[0], decoded[1]])["n_skipped"] == 1 and len(collate([decoded[0], decoded[1]])["pixel_values"]) == 1


def test_batch_augmentation_draws_per_film_and_is_off_at_strength_zero():
    data_config = build_classifier("resnet18", image_size=32).data_config
    film = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, 1, 32, 32), dtype=np.uint8))
    batch = film.repeat(4, 1, 1, 1)
    plain = (batch.float().expand(-1, 3, -1, -1) / 255 - torch.tensor(data_config["mean"]).view(1, -1, 1, 1)) / torch.tensor(data_config["std"]).view(1, -1, 1, 1)
    assert torch.allclose(BatchAugment(data_config, aug_strength=0.0)(batch), plain, atol=1e-6)
    torch.manual_seed(0)
    augmented = BatchAugment(data_config, aug_strength=2.0, intensity_aug=1.0, random_erasing=0.5)(batch)
    assert augmented.shape == (4, 3, 32, 32) and augmented.dtype == torch.float32
    assert len({round(float(x.sum()), 3) for x in augmented}) == 4  # four draws for four copies of one film
    torch.manual_seed(0)
    assert torch.equal(BatchAugment(data_config, aug_strength=2.0, intensity_aug=1.0, random_erasing=0.5)(batch), augmented)  # seeded


@pytest.mark.slow
@pytest.mark.parametrize("film_cache", [True, False])
def test_training_runs_over_the_cache_and_without_it(tmp_path, image_folder, film_cache):
    from pneumo_hf.training import train

    results = train(tiny_args(tmp_path / "run", image_folder, num_train_epochs=1, per_device_train_batch_size=6, film_cache=film_cache, film_cache_dir=str(tmp_path / "cache")))
    assert results.epochs_run == 1 and 0.0 <= results.validation["roc_auc"] <= 1.0
    assert (tmp_path / "cache").is_dir() == film_cache  # without the cache nothing is written there
