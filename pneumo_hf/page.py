"""What the Space's page says, built from the model folder and the prediction, with no Gradio in it: the notice and
privacy line, the sentence beside the decision, the /details object, the About tab (card and plots) and the check
tab's table and plots. `app.py` lays these out and wires them.

    from pneumo_hf.page import about, describe
    card, plots, notice = about(load_predictor().model_folder, keep_seconds=600)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

from .card import readable_split
from .folder import DOMAIN_CHECK, ModelFolder
from .inference import Prediction, Predictor
from .labels import NOT_A_DEVICE, POSITIVE_LABEL
from .metrics import plot_split
from .records import FilmRecord
from .site_check import MAX_FILMS, MAX_UNPACKED_BYTES

__all__ = ["CHECK_NOTE", "HEATMAP_NOTE", "NOTICE", "percent", "about", "check_plots", "check_table", "deleted_within_minutes", "describe", "details_of", "model_notice", "privacy_line"]

NOTICE = f"**{NOT_A_DEVICE}**"

HEATMAP_NOTE = (
    "Red marks where the model's evidence for PNEUMONIA is strongest: the whole model's, each part weighted as in its "
    "decision (docs/heatmap.md). It is not an outline of disease, and it may light up markers, tubes or electrodes "
    "the model has learnt to use."
)

CHECK_NOTE = (
    f"Upload one .zip of labelled films: `NORMAL/` and `PNEUMONIA/` folders at any depth, or the films with a `labels.csv` "
    f"(`file,label`). At most {MAX_FILMS:,} films and {MAX_UNPACKED_BYTES // 2**20} MB unpacked; archives with links, names "
    "outside the archive or zip bombs are refused. The figures are taken at the model's stored threshold, as "
    "`pneumo-hf evaluate` takes them, and a film that cannot be read is listed, not counted. **Patients' films belong on a "
    "local copy of this app (`python app.py`), not on a public Space**; `pneumo-hf calibrate` refits the threshold on them."
)


def percent(probability: float) -> str:
    """A probability as a person reads it, never "100.0%" or "0.0%": "> 99.9%" and "< 0.1%" at the ends (a model's
    probability is never certainty; the JSON keeps the number)."""
    if probability >= 0.9995:
        return "> 99.9%"
    if probability < 0.0005:
        return "< 0.1%"
    return f"{probability:.1%}"


def describe(prediction: Optional[Prediction]) -> str:
    """What sits beside the decision: the calibrated probability, the threshold, and any warning."""
    if prediction is None:
        return ""
    pneumonia = prediction.probabilities[POSITIVE_LABEL]
    lines = [f"⚠️ **{warning}**" for warning in prediction.warnings]
    lines += [f"Calibrated PNEUMONIA probability **{percent(pneumonia)}**; the model says PNEUMONIA from **{prediction.threshold:.1%}** up, so this film is **{prediction.decision}**."]
    return "\n\n".join(lines)


def details_of(prediction: Optional[Prediction], predictor: Predictor) -> Optional[dict[str, Any]]:
    """The /details object: decision, calibrated probabilities, threshold, warnings and the model's name and revision."""
    if prediction is None:
        return None
    return {
        "decision": prediction.decision,
        "probabilities": prediction.probabilities,
        "threshold": prediction.threshold,
        "warnings": prediction.warnings,
        "model": {"name": predictor.name, "revision": predictor.revision},
    }


def deleted_within_minutes(keep_seconds: int) -> int:
    """Gradio's sweep runs every half of `keep_seconds` and deletes what is older: a file is gone within 1.5 times it."""
    return max(1, round(1.5 * keep_seconds / 60))


def privacy_line(keep_seconds: int, analytics: bool = False, run_history: bool = False) -> str:
    """Where films and results are kept and for how long, from the settings in force."""
    history = (
        "The operator turned Gradio's run history on: calls of this app's public API endpoints from your browser are kept in it until you clear them."
        if run_history
        else "Nothing is kept in your browser (Gradio's run history is off)."
    )
    return (
        f"Uploaded films and their results are deleted from the server within {deleted_within_minutes(keep_seconds)} minutes. {history} "
        f"Gradio's usage analytics are {'on (the operator turned them on)' if analytics else 'off'}. Patients' films belong on a local copy (`python app.py`), not on a public Space."
    )


def model_notice(folder: Optional[ModelFolder]) -> str:
    """What the model folder says about films unlike its training films: the maintainers' adult figures (when they are
    about these weights) and the domain check's own record."""
    if folder is None:
        return "This model was not measured on adults: expect it to fail on them."
    maintainers = folder.maintainers_results() or {}
    adults = [row for row in maintainers.get("splits", []) if "adult" in row["name"]]
    lines = [f"On adults' films it {'does no better than chance' if row['roc_auc'] < 0.6 else 'was measured'}: ROC-AUC {row['roc_auc']:.2f} on the maintainers' {row['name']}, {row['films']} films." for row in adults]
    if not adults:
        lines.append("It was not measured on adults: expect it to fail on them.")
    check = folder.read(DOMAIN_CHECK)
    if check is None:
        return " ".join(lines + ["This model has no domain check: it does not warn when a film is unlike its training films."])
    earlier = " with an earlier, stricter cut" if maintainers.get("earlier_domain_check") else ""
    caught = [f"{100 * row['domain_warned']:.1f} % of that adult set{earlier}" for row in adults if row.get("domain_warned") is not None]
    caught += [f"{100 * share['flagged']:.1f} % of {share['films']} {readable_split(name)}" for name, share in check.get("reported", {}).items() if "adult" in name]
    lines.append("It warns when a film looks unlike its training films" + (f": the warning caught {' and '.join(caught)}, not all." if caught else "."))
    return " ".join(lines)


def about(folder: Optional[ModelFolder], privacy: str) -> tuple[str, list[tuple[str, str]], str]:
    """The About tab's card text (its images left out: they are shown as the gallery), the plots with their captions,
    and the notice with the folder's figures and the `privacy` line."""
    card = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", folder.card_text()) if folder else ""
    plots = [(str(path), path.stem.replace("_", " ")) for path in folder.plots()] if folder else []
    return card, plots, f"{NOTICE} {model_notice(folder)}\n\n{privacy}"


def check_table(summary: dict[str, Any]) -> str:
    """A site check's figures (what /evaluate returns first) as one Markdown row, then its notes."""

    def cell(value):
        return "—" if value is None else f"{value:.3f}"

    confusion = summary["confusion"]
    lines = [
        "| films | accuracy | ROC-AUC | sensitivity | specificity | ECE | threshold | TN FP FN TP | unreadable |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {summary['n']} | {cell(summary['accuracy'])} | {cell(summary['roc_auc'])} | {cell(summary['sensitivity'])} | {cell(summary['specificity'])} | "
        f"{cell(summary['ece'])} | {summary['threshold']:.3f} | {confusion['tn']} {confusion['fp']} {confusion['fn']} {confusion['tp']} | {len(summary['errors'])} |",
        *(f"\n{note}" for note in summary.get("notes", [])),
    ]
    return "\n".join(lines)


def check_plots(records: list[FilmRecord], threshold: float, folder: Path) -> list[Path]:
    """ROC (with the operating point), confusion matrix and reliability diagram of a site check's readable films (the
    records `pneumo_hf.site_check.check_archive` returned, scored as its summary was), written into `folder`; none
    without films of both labels."""
    scored = [record for record in records if not record.error]
    labels = [record.truth for record in scored]
    if len(set(labels)) < 2:
        return []
    return plot_split(labels, [record.probability for record in scored], threshold, folder, "site", "Your films")
