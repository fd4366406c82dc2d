"""Training speed against the hardware's limit (docs/speed.md): images/s of train/train.py's run (its `train_seconds`:
the epochs and their validation passes) with the film cache, without it, and of a plain loop of the same optimizer
steps on batches already in memory plus the same validation forward passes, for the same model and batch. Each is
measured in a process of its own, so that none inherits another's warm kernels:

    python tests/benchmark_train.py --train_dir ../shared/data/chest_xray_224/train --n 1600 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from pneumo_hf.data import collate, load_splits
from pneumo_hf.film_cache import cached_films
from pneumo_hf.models import build_classifier

MODELS = {"keras_cnn": 104, "efficientnet_b0": 160}


def in_memory_seconds(name: str, size: int, train_set, validation_set, epochs: int, batch_size: int, cache_dir: str) -> float:
    """The same optimizer steps and validation passes on normalised batches held in memory: the hardware's limit."""
    classifier = build_classifier(name, image_size=size)  # no dropout, as train/train.py builds it (--drop_rate 0)
    batches = [collate([films[i] for i in range(start, min(start + batch_size, len(films)))])
               for films in [cached_films(train_set, classifier.data_config, cache_dir)] for start in range(0, len(films), batch_size)]
    validation = [collate([films[i] for i in range(start, min(start + 64, len(films)))])
                  for films in [cached_films(validation_set, classifier.data_config, cache_dir)] for start in range(0, len(films), 64)]
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=1e-3, weight_decay=0.05)
    loss = torch.nn.CrossEntropyLoss()
    started = time.perf_counter()
    for _ in range(epochs):
        classifier.train()
        for batch in batches:
            loss(classifier(batch["pixel_values"]), batch["labels"]).backward()
            optimizer.step()
            optimizer.zero_grad()
        classifier.eval()
        with torch.inference_mode():
            for batch in validation:
                classifier(batch["pixel_values"])
    return time.perf_counter() - started


ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_dir", required=True)
    parser.add_argument("--n", type=int, default=1600, help="Films drawn from the folder (15 % of their patients go to validation).")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--in_memory", help=argparse.SUPPRESS)  # the child process that measures the limit
    parser.add_argument("--cache_dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    train_set, validation_set = load_splits(train_dir=args.train_dir, seed=7, max_samples=args.n)
    if args.in_memory:
        print(in_memory_seconds(args.in_memory, MODELS[args.in_memory], train_set, validation_set, args.epochs, args.batch_size, args.cache_dir))
        return 0
    images = len(train_set) * args.epochs
    print(f"{len(train_set)} training films x {args.epochs} epochs, {len(validation_set)} validation films, batch {args.batch_size}")
    print(f"{'model':<22}{'run':<34}{'seconds':>9}{'images/s':>10}{'of the limit':>14}")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            size = MODELS[name]
            cache = str(Path(folder) / "cache")
            started = time.perf_counter()
            for split in (train_set, validation_set):  # the first run's decoding, timed on its own
                cached_films(split, build_classifier(name, image_size=size).data_config, cache)
            decode = time.perf_counter() - started
            common = ["--n", str(args.n), "--epochs", str(args.epochs), "--batch_size", str(args.batch_size), "--cache_dir", cache, "--train_dir", args.train_dir]
            limit = float(subprocess.run([sys.executable, __file__, "--in_memory", name, *common], capture_output=True, text=True, check=True).stdout.split()[-1])
            rows = [("in-memory steps (the limit)", limit)]
            for film_cache in (True, False):
                output = Path(folder) / f"{name}-{film_cache}"
                flags = ["--output_dir", str(output), "--train_dir", args.train_dir, "--max_train_samples", str(args.n), "--split_seed", "7", "--model_name_or_path", name,
                         "--image_size", str(size), "--num_train_epochs", str(args.epochs), "--per_device_train_batch_size", str(args.batch_size),
                         "--film_cache_dir", cache, *([] if film_cache else ["--no_film_cache"])]
                subprocess.run([sys.executable, str(ROOT / "train" / "train.py"), *flags], capture_output=True, text=True, check=True)
                rows.append(("train/train.py, film cache" if film_cache else "train/train.py, --no_film_cache", json.loads((output / "all_results.json").read_text())["train_seconds"]))
            for label, seconds in rows:
                print(f"{name + f' @{size}':<22}{label:<34}{seconds:>9.1f}{images / seconds:>10.1f}{limit / seconds:>14.2f}")
            print(f"{name + f' @{size}':<22}{'decoding into the cache, once':<34}{decode:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
