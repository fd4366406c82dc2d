"""Check the model on a site's own labelled films: a .zip unpacked safely into a folder of its own, its films found with
their labels, predicted as `pneumo-hf predict` predicts them, and measured at the model's stored threshold.

    from pneumo_hf.site_check import check_archive
    summary, records = check_archive(load_predictor(), "our_films.zip", workdir="/tmp/check", csv_path="/tmp/check.csv")

The .zip holds `NORMAL/` and `PNEUMONIA/` folders at any depth, or images with a `labels.csv` of `file,label`. What
the app's "Check on your films" tab and its `/evaluate` endpoint run.
"""

from __future__ import annotations

import csv
import io
import math
import re
import shutil
import stat
import zipfile
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any, Union

import numpy as np

from . import metrics
from .batch import Collected, predict_archive
from .errors import UserError
from .films import Film
from .imaging import film_files, hidden_in
from .inference import Predictor
from .labels import LABEL2ID, LABELS
from .records import COLUMNS, FilmRecord, csv_row

__all__ = ["ArchiveError", "MAX_FILMS", "MAX_UNPACKED_BYTES", "check_archive", "labelled_films", "safe_extract", "summarise"]

MAX_FILMS = 1000
MAX_UNPACKED_BYTES = 500 * 2**20
MAX_RATIO = 200  # uncompressed over compressed size of one entry: JPEG and DICOM films compress far less
CHUNK = 2**20


class ArchiveError(UserError, ValueError):
    """An archive refused before or while unpacking, or one with no labelled films; the message says why in one sentence."""


def safe_extract(archive: Union[str, Path], target: Path) -> None:
    """Unpack `archive` into `target` after checking every entry: names that climb out or are absolute, links, more
    than MAX_FILMS files, more than MAX_UNPACKED_BYTES in all, or an entry compressed over MAX_RATIO times are refused
    before anything is written; the bytes written are counted too, in case the archive's sizes lie."""
    try:
        bundle = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as error:
        raise ArchiveError("This file is not a .zip archive we can open; zip the NORMAL/ and PNEUMONIA/ folders (or the films and labels.csv) and upload that.") from error
    with bundle:
        entries = bundle.infolist()
        files = [entry for entry in entries if not entry.is_dir()]
        if len(files) > MAX_FILMS + 1 or len(entries) > 2 * MAX_FILMS + 1:
            raise ArchiveError(f"The archive holds {len(files):,} files; the limit is {MAX_FILMS:,} films: split it into smaller archives.")
        for entry in entries:
            _check_entry(entry)
        total = sum(entry.file_size for entry in files)
        if total > MAX_UNPACKED_BYTES:
            raise ArchiveError(f"The archive unpacks to {total / 2**20:,.0f} MB, over the {MAX_UNPACKED_BYTES // 2**20} MB limit: split it into smaller archives.")
        written = 0
        for entry in files:
            destination = target / PurePosixPath(entry.filename.replace("\\", "/"))
            destination.parent.mkdir(parents=True, exist_ok=True)
            with bundle.open(entry) as source, open(destination, "wb") as sink:
                while chunk := source.read(CHUNK):
                    written += len(chunk)
                    if written > total:
                        raise ArchiveError("The archive unpacks to more than it declares (a zip bomb?); it is refused.")
                    sink.write(chunk)


def _check_entry(entry: zipfile.ZipInfo) -> None:
    name = entry.filename.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in PurePosixPath(name).parts:
        raise ArchiveError(f"The archive entry {entry.filename!r} points outside the archive; archives with such names are refused.")
    if stat.S_ISLNK(entry.external_attr >> 16):
        raise ArchiveError(f"The archive entry {entry.filename!r} is a link; archives with links are refused.")
    if entry.file_size > CHUNK and entry.file_size > MAX_RATIO * max(entry.compress_size, 1):
        raise ArchiveError(f"The archive entry {entry.filename!r} is compressed {entry.file_size / max(entry.compress_size, 1):,.0f} times (a zip bomb?); it is refused.")


def labelled_films(folder: Path) -> list[tuple[str, Path, int]]:
    """(name in the archive, path, label id) of each film: listed by the shallowest `labels.csv` (`file,label`, files
    relative to it; any capitalisation of the name, header and labels, a spreadsheet's byte-order mark, `;` or tab
    between columns), else every image or DICOM file under a folder named NORMAL or PNEUMONIA (any capitalisation) at
    any depth. What an archive tool adds (`__MACOSX/`, `._` files, Thumbs.db, DICOMDIR) is not a film."""
    listings = sorted((path for path in folder.rglob("*") if path.name.lower() == "labels.csv" and path.is_file() and not hidden_in(path, folder)), key=lambda path: len(path.parts))
    films = _listed(listings[0], folder) if listings else _foldered(folder)
    if not films:
        raise ArchiveError("No labelled films in the archive: put them in NORMAL/ and PNEUMONIA/ folders, or add a labels.csv with the columns file,label.")
    if len(films) > MAX_FILMS:
        raise ArchiveError(f"The archive holds {len(films):,} films; the limit is {MAX_FILMS:,}: split it into smaller archives.")
    return films


def _rows(listing: Path) -> list[dict[str, str]]:
    """labels.csv as a spreadsheet saves it: UTF-8 with or without a byte-order mark (else Latin-1), `,`, `;` or tab
    between columns, header names in any case; rows with nothing in them dropped."""
    data = listing.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    try:
        dialect = csv.Sniffer().sniff(text.split("\n", 1)[0], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text), dialect)
    header = [name.strip().lower() for name in next(reader, [])]
    return [dict(zip(header, (cell.strip() for cell in cells), strict=False)) for cells in reader if any(cell.strip() for cell in cells)]


def _listed(listing: Path, root: Path) -> list[tuple[str, Path, int]]:
    rows = _rows(listing)
    if not rows or not {"file", "label"} <= set(rows[0]):
        raise ArchiveError("labels.csv needs the columns file,label (label NORMAL or PNEUMONIA, or 0 or 1).")
    films = []
    inside = root.resolve()
    for number, row in enumerate(rows, start=2):
        label = (row.get("label") or "").strip().upper()
        label_id = LABEL2ID.get(label, int(label) if label in ("0", "1") else None)
        if label_id is None:
            raise ArchiveError(f"labels.csv line {number}: label {row['label']!r} is neither NORMAL nor PNEUMONIA (nor 0 or 1).")
        path = (listing.parent / (row.get("file") or "").strip().replace("\\", "/")).resolve()
        if not path.is_relative_to(inside) or path == listing.parent.resolve():
            raise ArchiveError(f"labels.csv line {number}: file {row.get('file')!r} is not a file inside the archive; list the films by their names in it.")
        films.append((str(path.relative_to(inside)), path, label_id))
    return films


def _foldered(root: Path) -> list[tuple[str, Path, int]]:
    films = []
    for path in film_files(root):
        label = next((part.upper() for part in reversed(path.relative_to(root).parts[:-1]) if part.upper() in LABEL2ID), None)
        if label is not None:
            films.append((str(path.relative_to(root)), path, LABEL2ID[label]))
    return films


def check_archive(predictor: Predictor, archive: Union[str, Path], workdir: Path, csv_path: Path, batch_size: int = 8) -> tuple[dict[str, Any], list[FilmRecord]]:
    """Unpack `archive` into `workdir` (removed afterwards), predict every labelled film as `pneumo-hf predict` does
    and write the per-film CSV (its columns plus `label`) to `csv_path`; returns the summary and the films' records
    (with their labels as `truth`)."""
    unpacked = Path(workdir) / "films"
    try:
        safe_extract(archive, unpacked)
        films = labelled_films(unpacked)
        collected = Collected()
        predict_archive(predictor, [Film(name, str(path)) for name, path, _ in films], [collected], batch_size=batch_size, num_workers=0)
        records = [replace(record, truth=label) for record, (_, _, label) in zip(collected.records, films, strict=True)]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    with open(csv_path, "w", newline="") as file:
        writer = csv.DictWriter(file, [*COLUMNS, "label"])
        writer.writeheader()
        writer.writerows({**csv_row(record), "label": LABELS[record.truth]} for record in records)
    return summarise(records, predictor.threshold), records


def summarise(records: list[FilmRecord], threshold: float) -> dict[str, Any]:
    """The figures of the readable films at `threshold`, JSON-ready (None where a figure is undefined, as ROC-AUC
    with one class), and the films that could not be read."""
    scored = [record for record in records if not record.error]
    labels = np.array([record.truth for record in scored], dtype=int)
    scores = np.array([record.probability for record in scored])
    found = metrics.classification_metrics(labels, scores, threshold) if scored else {}
    (tn, fp), (fn, tp) = found.get("confusion_matrix", [[0, 0], [0, 0]])

    def figure(key: str):
        value = found.get(key)
        return None if value is None or math.isnan(value) else value

    return {
        "n": len(scored),
        "accuracy": figure("accuracy"),
        "roc_auc": figure("roc_auc"),
        "sensitivity": figure("sensitivity") if (labels == 1).any() else None,  # undefined without films of the label
        "specificity": figure("specificity") if (labels == 0).any() else None,
        "ece": figure("ece"),
        "ece_pneumonia": metrics.positive_calibration_error(labels, scores) if scored else None,  # 10 bins of P(PNEUMONIA)
        "threshold": threshold,
        "confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
        "errors": [{"file": record.key, "error": record.error} for record in records if record.error],
        "notes": _notes(labels, len(records) - len(scored)),
    }


def _notes(labels: np.ndarray, unreadable: int) -> list[str]:
    """Sentences for the figures that cannot be given, saying why and what is still measured."""
    notes = []
    if not len(labels):
        return [f"None of the {unreadable} films could be read, so nothing is measured; the errors say why for each."]
    present = [LABELS[label] for label in (0, 1) if (labels == label).any()]
    if len(present) == 1:
        missing, undefined = ("PNEUMONIA", "sensitivity") if present == ["NORMAL"] else ("NORMAL", "specificity")
        notes.append(
            f"All {len(labels)} readable films are {present[0]}: with no {missing} film, ROC-AUC and {undefined} cannot be measured; "
            f"accuracy, {'specificity' if undefined == 'sensitivity' else 'sensitivity'} and ECE are."
        )
    if unreadable:
        notes.append(f"{unreadable} film{'s' if unreadable > 1 else ''} could not be read and {'are' if unreadable > 1 else 'is'} not counted; see errors.")
    return notes
