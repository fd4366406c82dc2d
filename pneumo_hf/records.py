"""One film's result as it travels from the model to where it is kept: the batch CSV or Parquet file, the overlays,
the DICOM results, the site check's figures. A `FilmRecord` is typed; only the CSV writer turns it into text.

    predict_archive(predictor, films, [CsvSink(Path("preds.csv")), OverlaySink(Path("overlays"))])

A sink says which films it still needs (`pending`: a rerun predicts only those, each once whatever the sinks) and
takes the records of each batch as they come (`write`); `close` runs once every shard is done.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional, Protocol

from .films import Film
from .inference import Prediction
from .labels import LABELS, POSITIVE_LABEL

__all__ = ["COLUMNS", "FilmRecord", "Sink", "csv_row"]

COLUMNS = ["path", "decision", *(f"probability_{name}" for name in LABELS), "threshold", "warnings", "error"]
WARNING_SEPARATOR = " | "


@dataclass(frozen=True)
class FilmRecord:
    """A film's `key` (the CSV's `path`), and its `prediction` (probabilities, decision, warnings; the heatmap when
    a sink asked for it) or the `error` that kept it from the model; `truth`, its known label id, in a site check."""

    key: str
    prediction: Optional[Prediction] = None
    error: str = ""
    truth: Optional[int] = None

    @property
    def probability(self) -> float:
        """The calibrated P(PNEUMONIA)."""
        return self.prediction.probabilities[POSITIVE_LABEL]


def csv_row(record: FilmRecord) -> dict[str, str]:
    """The record as a row of the batch CSV (`COLUMNS`, a contract): probabilities and threshold to 6 decimals,
    the warnings joined by " | "; empty cells where the film could not be read."""
    row = dict.fromkeys(COLUMNS, "")
    row["path"], row["error"] = record.key, record.error
    if record.prediction is not None:
        prediction = record.prediction
        row.update({f"probability_{name}": f"{p:.6f}" for name, p in prediction.probabilities.items()})
        row.update(decision=prediction.decision, threshold=f"{prediction.threshold:.6f}", warnings=WARNING_SEPARATOR.join(prediction.warnings))
    return row


class Sink(Protocol):
    """Where records go. `heatmaps`: whether it needs each prediction's heatmap."""

    heatmaps: bool

    def pending(self, films: Sequence[Film]) -> set[str]:
        """The keys of `films` this sink has no result for yet."""

    def write(self, records: Sequence[FilmRecord]) -> None:
        """Keep one batch's records."""

    def close(self) -> None:
        """Finish, once every shard has written (the main process only)."""
