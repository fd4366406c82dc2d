"""Predict a whole archive: files, folders (recursive), DICOM trees, CSV/text lists of paths, a Hub data set id or
a local copy of one → one row per input (path, decision, probabilities, threshold, warnings, error).

    pneumo-hf predict ../shared/data/chest_xray_224/test_dev --output preds.csv
    pneumo-hf predict scans/ paths.csv --output preds.parquet --heatmaps heatmaps/ --bf16
    accelerate launch -m pneumo_hf predict archive/ --output preds.csv       # one shard per process

Films are decoded in DataLoader workers and predicted in batches. Rows are flushed to `OUTPUT.part-RANK.csv` as
they come; a run killed and started again with the same output skips what is written and does the rest. At the
end the parts are merged, in input order, into OUTPUT (CSV, or Parquet for a .parquet name).
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from .errors import UserError
from .films import Film, FilmDataset
from .imaging import film_files, xray_warnings
from .inference import Predictor
from .labels import LABELS

logger = logging.getLogger(__name__)

__all__ = ["COLUMNS", "collect_inputs", "predict_archive"]

COLUMNS = ["path", "decision", *(f"probability_{name}" for name in LABELS), "threshold", "warnings", "error"]
LIST_SUFFIXES = (".csv", ".txt", ".lst")


class InputError(UserError, ValueError):
    """An input that names nothing to predict; the message says what was expected."""


def collect_inputs(inputs: Sequence[str], split: str = "test") -> list[Film]:
    """Every film the inputs name, in order, each once: image or DICOM files, folders searched recursively (DICOM
    files without a suffix included), lists of paths (a CSV with a `path` column, or one path a line), and data
    sets (a Hub id, or a local copy holding parquet files) of which `split` is read."""
    films: dict[str, Film] = {}
    for name in inputs:
        for film in _films_of(name, split):
            films.setdefault(film.key, film)
    return list(films.values())


def _films_of(name: str, split: str) -> list[Film]:
    path = Path(name)
    if path.is_file():
        if path.suffix.lower() in LIST_SUFFIXES:
            return [Film(str(Path(entry)), str(Path(entry))) for entry in _listed_paths(path)]
        return [Film(str(path), str(path))]
    if path.is_dir():
        if any(path.rglob("*.parquet")):
            return _dataset_films(str(path), split)
        return [Film(str(p), str(p)) for p in film_files(path)]
    if name.count("/") == 1 and not path.exists():
        return _dataset_films(name, split)
    raise InputError(f"{name}: no such file or folder, and not a Hub data set id (ORG/NAME); pass films, folders, a list of paths or a data set.")


def _listed_paths(path: Path) -> list[str]:
    text = path.read_text()
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        if rows and "path" not in rows[0]:
            raise InputError(f"{path} has no `path` column; give a CSV with one, or a text file with one path a line.")
        entries = [row["path"] for row in rows]
    else:
        entries = text.splitlines()
    return [entry.strip() for entry in entries if entry.strip() and not entry.startswith("#")]


def _dataset_films(name: str, split: str) -> list[Film]:
    import datasets

    from .hub import hub_reachable

    if not Path(name).exists() and not hub_reachable():
        raise InputError(f"{name}: not a local folder, and the Hub is not reachable; pass a local copy of the data set repo.")
    try:
        dataset = datasets.load_dataset(name, split=split)
    except ValueError as error:
        raise InputError(f"Data set {name!r} has no split {split!r}; choose one with `split`.") from error
    except FileNotFoundError as error:
        raise InputError(f"Data set {name!r} not found; pass a Hub id or a local copy of a Hub data set repo.") from error
    if "image" not in dataset.column_names:
        raise InputError(f"Data set {name!r} has no `image` column.")
    dataset = dataset.cast_column("image", datasets.Image(decode=False))
    return [Film(f"{name}:{split}/{index}", dataset=dataset, index=index) for index in range(len(dataset))]


class _Described:
    """What the batch command keeps of a decoded film beside its pixels: its warnings, and the image for a heatmap."""

    def __init__(self, keep_images: bool):
        self.keep_images = keep_images

    def __call__(self, image) -> dict[str, Any]:
        return {"warnings": xray_warnings(image), "image": image if self.keep_images else None}


def _part(output: Path, rank: int) -> Path:
    return output.with_name(f"{output.name}.part-{rank}.csv")


def written_rows(output: Path) -> dict[str, dict]:
    """Complete rows already written for `output`: its merged file and the parts of a run that was stopped."""
    rows: dict[str, dict] = {}
    for part in [output, *sorted(output.parent.glob(f"{output.name}.part-*.csv"))]:
        if not part.is_file():
            continue
        if part.suffix == ".parquet":
            import pandas as pd

            found = pd.read_parquet(part).fillna("").astype(str).to_dict("records")
        else:
            found = list(csv.DictReader(io.StringIO(part.read_text())))
        for row in found:
            if all(row.get(column) is not None for column in COLUMNS) and None not in row:  # a line cut by a kill is not a row
                rows[row["path"]] = {column: row[column] for column in COLUMNS}
    return rows


def predict_archive(
    predictor: Predictor,
    films: Sequence[Film],
    output: Path,
    heatmaps: Optional[Path] = None,
    batch_size: int = 8,
    num_workers: int = 1,
    accelerator=None,
) -> dict[str, int]:
    """Predict `films` into `output`, resuming a stopped run; with an `accelerator`, this process's shard only.
    Returns counts: films, predicted now, skipped as already written, errors."""
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    done = written_rows(output)
    if accelerator:
        accelerator.wait_for_everyone()  # all read what was written before anyone writes
    todo = [film for film in films if film.key not in done][rank::world]
    output.parent.mkdir(parents=True, exist_ok=True)
    if heatmaps:
        heatmaps.mkdir(parents=True, exist_ok=True)
    loader = torch.utils.data.DataLoader(
        FilmDataset(todo, predictor.transform, extras=_Described(heatmaps is not None), any_error=True), batch_size=batch_size, num_workers=num_workers, collate_fn=list
    )
    part = _part(output, rank)
    counts = {"films": len(films), "predicted": 0, "skipped": len(done), "errors": 0}  # the bar shows films/s
    with open(part, "a", newline="") as file, tqdm(total=len(todo), unit="film", disable=rank != 0, desc=f"predict (shard {rank + 1}/{world})") as bar:
        if file.tell() and not part.read_bytes().endswith(b"\n"):
            file.write("\n")  # after a kill mid-line: the cut line stays malformed and is dropped at the merge
        writer = csv.DictWriter(file, COLUMNS)
        if not file.tell():
            writer.writeheader()
        for batch in loader:
            rows = _predict_rows(predictor, batch, heatmaps)
            writer.writerows(rows)
            file.flush()
            counts["predicted"] += len(rows)
            counts["errors"] += sum(bool(row["error"]) for row in rows)
            bar.update(len(rows))
    if accelerator:
        accelerator.wait_for_everyone()
    if rank == 0:
        _merge(films, output)
    counts["errors"] += sum(bool(row["error"]) for row in done.values())
    return counts


def _predict_rows(predictor: Predictor, batch: list[dict], heatmaps: Optional[Path]) -> list[dict]:
    readable = [item for item in batch if "error" not in item]
    predictions = []
    if readable:
        images = [item["image"] for item in readable]
        predictions = predictor.predict_images(images, torch.stack([item["pixel_values"] for item in readable]), heatmap=heatmaps is not None, warnings=[item["warnings"] for item in readable])
    by_key = {item["key"]: prediction for item, prediction in zip(readable, predictions, strict=True)}
    rows = []
    for item in batch:
        key = item["key"]
        row = dict.fromkeys(COLUMNS, "")
        row["path"], row["error"] = key, item.get("error", "")
        if key in by_key:
            prediction = by_key[key]
            row.update({f"probability_{name}": f"{p:.6f}" for name, p in prediction.probabilities.items()})
            row.update(decision=prediction.label, threshold=f"{prediction.threshold:.6f}", warnings=" | ".join(prediction.warnings))
            if heatmaps is not None:
                _write_overlay(prediction, key, heatmaps)
        rows.append(row)
    return rows


def _write_overlay(prediction, key: str, folder: Path) -> None:
    from .cam import overlay

    name = f"{Path(key.replace(':', '_')).stem}-{hashlib.sha1(key.encode()).hexdigest()[:8]}.jpg"
    overlay(prediction.image, prediction.heatmap).save(folder / name, quality=90)


def _merge(films: Sequence[Film], output: Path) -> None:
    """One row per film, in input order, into `output`; the parts are removed once it is written."""
    rows = written_rows(output)
    ordered = [rows[film.key] for film in films if film.key in rows]
    temporary = output.with_name(output.name + ".tmp")
    if output.suffix.lower() == ".parquet":
        import pandas as pd

        table = pd.DataFrame(ordered, columns=COLUMNS)
        numeric = [column for column in COLUMNS if column.startswith("probability_") or column == "threshold"]
        table[numeric] = table[numeric].apply(pd.to_numeric, errors="coerce")
        table.to_parquet(temporary, index=False)
    else:
        with open(temporary, "w", newline="") as file:
            writer = csv.DictWriter(file, COLUMNS)
            writer.writeheader()
            writer.writerows(ordered)
    os.replace(temporary, output)
    for part in output.parent.glob(f"{output.name}.part-*.csv"):
        part.unlink()
