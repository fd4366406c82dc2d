"""Predict a whole archive: files, folders (recursive), DICOM trees, CSV/text lists of paths, a Hub data set id or
a local copy of one → one row per input (path, decision, probabilities, threshold, warnings, error).

    pneumo-hf predict ../shared/data/chest_xray_224/test_dev --output preds.csv
    pneumo-hf predict scans/ paths.csv --output preds.parquet --heatmaps heatmaps/ --bf16
    accelerate launch -m pneumo_hf predict archive/ --output preds.csv       # one shard per process

Films are decoded in DataLoader workers and predicted in batches, each film once, into typed records
(`pneumo_hf.records`) that every sink takes: the table (`CsvSink`: rows flushed to `OUTPUT.part-RANK.csv` as they
come, merged in input order into OUTPUT, CSV or Parquet), the overlays (`OverlaySink`), the DICOM results
(`pneumo_hf.dicom_out.DicomSink`). A run killed and started again predicts only what some sink still lacks.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .errors import UserError
from .films import Film, FilmDataset
from .imaging import film_files, xray_warnings
from .inference import Predictor
from .records import COLUMNS, FilmRecord, Sink, csv_row

logger = logging.getLogger(__name__)

__all__ = ["COLUMNS", "Collected", "CsvSink", "OverlaySink", "collect_inputs", "film_records", "predict_archive"]

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


def predict_archive(predictor: Predictor, films: Sequence[Film], sinks: Sequence[Sink], batch_size: int = 8, num_workers: int = 1, accelerator=None) -> dict[str, int]:
    """Predict each film some sink still needs, once, and hand every batch's records to all `sinks`; with an
    `accelerator`, this process's shard only (the sinks are closed by the main process once all are done). Returns
    counts: films, predicted now, skipped (no sink needed them), errors among those predicted now."""
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    pending = set().union(*(sink.pending(films) for sink in sinks))
    if accelerator:
        accelerator.wait_for_everyone()  # all read what was written before anyone writes
    todo = [film for film in films if film.key in pending][rank::world]
    heatmaps = any(sink.heatmaps for sink in sinks)
    loader = torch.utils.data.DataLoader(FilmDataset(todo, predictor.transform, extras=_Described(heatmaps), any_error=True), batch_size=batch_size, num_workers=num_workers, collate_fn=list)
    counts = {"films": len(films), "predicted": 0, "skipped": len(films) - len(pending), "errors": 0}
    with tqdm(total=len(todo), unit="film", disable=rank != 0, desc=f"predict (shard {rank + 1}/{world})") as bar:  # the bar shows films/s
        for batch in loader:
            records = film_records(predictor, batch, heatmaps)
            for sink in sinks:
                sink.write(records)
            counts["predicted"] += len(records)
            counts["errors"] += sum(bool(record.error) for record in records)
            bar.update(len(records))
    if accelerator:
        accelerator.wait_for_everyone()
    if rank == 0:
        for sink in sinks:
            sink.close()
    return counts


def film_records(predictor: Predictor, batch: list[dict], heatmaps: bool = False) -> list[FilmRecord]:
    """The records of one loader batch of `FilmDataset` items, in order: the readable films in one forward pass."""
    readable = [item for item in batch if "error" not in item]
    predictions = []
    if readable:
        pixel_values = torch.stack([item["pixel_values"] for item in readable])
        predictions = predictor.predict_images([item["image"] for item in readable], pixel_values, heatmap=heatmaps, warnings=[item["warnings"] for item in readable])
    by_key = {item["key"]: prediction for item, prediction in zip(readable, predictions, strict=True)}
    return [FilmRecord(item["key"], by_key.get(item["key"]), item.get("error", "")) for item in batch]


class CsvSink:
    """The batch command's table: rows flushed to `OUTPUT.part-RANK.csv` as they come (a film in the table is not
    predicted again), merged at the end, in input order, into OUTPUT (CSV, or Parquet for a .parquet name)."""

    heatmaps = False

    def __init__(self, output: Path, rank: int = 0):
        self.output, self.part = output, output.with_name(f"{output.name}.part-{rank}.csv")
        self.films: Sequence[Film] = ()
        self.wanted: set[str] = set()  # the films without a row: another sink's films are predicted too, not written twice
        self.errors = 0  # rows with an error in the merged table

    def pending(self, films: Sequence[Film]) -> set[str]:
        self.films = films
        self.wanted = {film.key for film in films} - set(written_rows(self.output))
        return self.wanted

    def write(self, records: Sequence[FilmRecord]) -> None:
        records = [record for record in records if record.key in self.wanted]
        if not records:
            return
        self.output.parent.mkdir(parents=True, exist_ok=True)
        with open(self.part, "a", newline="") as file:
            if file.tell() and _ends_inside_a_line(self.part):
                file.write("\n")  # after a kill mid-line: the cut line stays malformed and is dropped at the merge
            writer = csv.DictWriter(file, COLUMNS)
            if not file.tell():
                writer.writeheader()
            writer.writerows(csv_row(record) for record in records)

    def close(self) -> None:
        """One row per film, in input order, into the output; the parts are removed once it is written."""
        rows = written_rows(self.output)
        ordered = [rows[film.key] for film in self.films if film.key in rows]
        self.errors = sum(bool(row["error"]) for row in ordered)
        temporary = self.output.with_name(self.output.name + ".tmp")
        if self.output.suffix.lower() == ".parquet":
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
        os.replace(temporary, self.output)
        for part in self.output.parent.glob(f"{self.output.name}.part-*.csv"):
            part.unlink()


def _ends_inside_a_line(path: Path) -> bool:
    """Whether the file's last byte is not a newline (a run killed mid-write); only that byte is read."""
    with open(path, "rb") as file:
        file.seek(-1, os.SEEK_END)
        return file.read(1) != b"\n"


def written_rows(output: Path) -> dict[str, dict]:
    """Complete rows already written for `output`, as text: its merged file and the parts of a run that was stopped."""
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


class OverlaySink:
    """Each film's heatmap over the film, a JPEG in `folder` named after its key (a film with one is not predicted again)."""

    heatmaps = True

    def __init__(self, folder: Path):
        self.folder = folder

    def pending(self, films: Sequence[Film]) -> set[str]:
        return {film.key for film in films if not self.path(film.key).is_file()}

    def path(self, key: str) -> Path:
        return self.folder / f"{Path(key.replace(':', '_')).stem}-{hashlib.sha1(key.encode()).hexdigest()[:8]}.jpg"

    def write(self, records: Sequence[FilmRecord]) -> None:
        from .cam import overlay

        self.folder.mkdir(parents=True, exist_ok=True)
        for record in records:
            if record.prediction is not None and not self.path(record.key).is_file():  # a film another sink needed keeps its overlay
                overlay(record.prediction.image, record.prediction.heatmap).save(self.path(record.key), quality=90)

    def close(self) -> None:
        pass


class Collected:
    """The records kept in memory, in the films' order (the site check's): `records`."""

    heatmaps = False

    def __init__(self):
        self.records: list[FilmRecord] = []
        self.order: dict[str, int] = {}  # key -> place among the films

    def pending(self, films: Sequence[Film]) -> set[str]:
        self.order = {film.key: i for i, film in enumerate(films)}
        return set(self.order)

    def write(self, records: Sequence[FilmRecord]) -> None:
        self.records.extend(records)

    def close(self) -> None:
        self.records.sort(key=lambda record: self.order[record.key])
