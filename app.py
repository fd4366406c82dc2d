"""The Space: upload a chest X-ray (JPEG, PNG, WebP, BMP, TIFF, GIF or DICOM), get NORMAL/PNEUMONIA and a heatmap.

    python app.py                                    # http://127.0.0.1:7860, the model shipped in pneumo_hf
    PNEUMO_MODEL=runs/b0 python app.py               # a local model folder or a Hub repo id
    PNEUMO_MODELS=runs/b0,runs/r50 python app.py     # several, with a selector
    PNEUMO_EXAMPLES_DIR=../shared/data/chest_xray_224/train python app.py
"""

from __future__ import annotations

import os

# One OpenMP thread per worker, set before torch loads: two workers each spinning two threads on two cores
# served 0.64 of Gradio's ceiling, one thread each 0.87 (README, "App speed"); torch.set_num_threads does not
# reach Gradio's worker threads.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Privacy by default: Gradio's usage analytics and its run history (every film and result kept in the visitor's browser,
# with an offer to push them to a Hub bucket) are off unless the operator turns them on; the MCP server is on.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("GRADIO_RUN_HISTORY", "False")
os.environ.setdefault("GRADIO_MCP_SERVER", "True")
import csv
import json
import re
import tempfile
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import gradio as gr
from gradio.components.label import LabelConfidence, LabelData

from pneumo_hf import ImageError, ModelError, Prediction, Predictor, load_predictor
from pneumo_hf.cam import overlay
from pneumo_hf.examples import find_examples, hub_examples
from pneumo_hf.hub import card_text, maintainers_results, readable_split
from pneumo_hf.imaging import IMAGE_SUFFIXES, MAX_FILE_BYTES, load_image
from pneumo_hf.inference import DEFAULT_MODEL_DIR
from pneumo_hf.metrics import plot_split
from pneumo_hf.site_check import MAX_FILMS, MAX_UNPACKED_BYTES, ArchiveError, check_archive

DEFAULT = "default (shipped in pneumo_hf)"
NOTICE = (
    "**Not a medical device.** A research demo trained on pediatric (age 1–5) anterior-posterior chest films "
    "from one hospital. Do not use it to diagnose or treat anyone."
)
KEEP_FILES_SECONDS = int(os.environ.get("PNEUMO_KEEP_FILES_SECONDS", 600))  # uploads and outputs, then deleted
OVERLAY_MAX_SIDE = 1024  # the page shows the overlay at most 360 px high
CONCURRENCY = int(os.environ.get("PNEUMO_CONCURRENCY", 2))  # one worker per core of a free Space


class DecisionLabel(gr.Label):
    """A `gr.Label` whose heading is the decision taken at the model's threshold (gr.Label alone heads with the
    largest confidence, which contradicts the decision whenever the threshold is not 0.5); the confidences stay
    the calibrated probabilities."""

    is_template = True  # drawn by gr.Label's own front end

    def postprocess(self, value: Any) -> Any:
        if isinstance(value, Prediction):
            ranked = sorted(value.probabilities.items(), key=lambda item: -item[1])
            return LabelData(label=value.label, confidences=[LabelConfidence(label=name, confidence=p) for name, p in ranked])
        return super().postprocess(value)


def model_choices() -> list[str]:
    """Models named by PNEUMO_MODELS (comma-separated) or PNEUMO_MODEL; else the one shipped in the package."""
    names = [name.strip() for name in os.environ.get("PNEUMO_MODELS", os.environ.get("PNEUMO_MODEL", "")).split(",") if name.strip()]
    return names or [DEFAULT]


@lru_cache(maxsize=4)
def get_predictor(name: str) -> Predictor:
    """Loaded on first use, then kept: nothing slow or networked at import time."""
    return load_predictor(None if name == DEFAULT else name)


def _predict(file: Optional[str], model_name: str, heatmap: bool) -> Prediction:
    if not file:
        raise gr.Error("Upload a chest X-ray first (JPEG, PNG, WebP, BMP, TIFF, GIF or DICOM).")
    try:
        return get_predictor(model_name).predict(file, heatmap=heatmap)
    except (ImageError, ModelError) as error:
        raise gr.Error(str(error)) from None


def output_path(kind: str, suffix: str) -> Path:
    """A new file in Gradio's cache under a name of its own (`kind/<uuid><suffix>`): served as it is, removed with the
    cache, never shared by two requests."""
    folder = Path(gr.utils.get_upload_folder()) / kind
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{uuid.uuid4().hex}{suffix}"


def overlay_file(prediction: Prediction, kind: str = "overlays", blended: bool = True) -> str:
    """The heatmap over the film (or, with `blended` False, the film alone at the same size) as a JPEG under a name of
    its own in Gradio's cache: served as it is, removed with the cache, and never shared by two requests (identical
    outputs under one cached name raced)."""
    picture = overlay(prediction.image, prediction.heatmap) if blended else prediction.image.convert("RGB")
    picture.thumbnail((OVERLAY_MAX_SIDE, OVERLAY_MAX_SIDE))
    path = output_path(kind, ".jpg")
    picture.save(path, quality=90)
    return str(path)


def predict_page(file: Optional[str], model_name: str) -> tuple[Prediction, str, Prediction]:
    """The page's prediction: label confidences (headed by the decision), the heatmap overlay, and the prediction kept."""
    prediction = _predict(file, model_name, heatmap=True)
    return prediction, overlay_file(prediction), prediction


def predict_overlay(file: Optional[str]) -> tuple[Prediction, str]:
    """The /predict endpoint of gradio_client (the first model served): label confidences, then the heatmap overlay."""
    return predict_page(file, model_choices()[0])[:2]


def film_and_heatmap(prediction: Optional[Prediction], heatmap_path: Optional[str]) -> Optional[tuple[str, str]]:
    """The slider's two sides: the film, and the heatmap over it at the same size."""
    if prediction is None or not heatmap_path:
        return None
    return overlay_file(prediction, "films", blended=False), heatmap_path


def predict(film: str, model_name: str) -> tuple[dict[str, Any], str]:
    """NORMAL or PNEUMONIA for one frontal chest X-ray (a JPEG, PNG, WebP, BMP, TIFF, GIF or DICOM file), with a heatmap of
    where the model looked. Not a medical device: a research model trained on frontal (anterior-posterior) chest films
    of children aged 1 to 5 from one hospital; do not use it to diagnose or treat anyone, and expect it to fail on
    adults, other views and other body parts.

    Args:
        film: One frontal chest X-ray as a JPEG, PNG, WebP, BMP, TIFF, GIF or DICOM file (a URL or a base64 data URI).
        model_name: Which of the served models answers; leave it at its default.

    Returns:
        A JSON object with `decision` (NORMAL or PNEUMONIA, taken at the model's stored threshold), `probabilities`
        (calibrated), `threshold`, `warnings` (sentences for a person: read them before the decision) and `model`; then
        the heatmap over the film as an image (red: where the model saw PNEUMONIA).
    """
    prediction = _predict(film, model_name, heatmap=True)
    return details_of(prediction, model_name), overlay_file(prediction)


def details_of(prediction: Optional[Prediction], model_name: str) -> Optional[dict[str, Any]]:
    if prediction is None:
        return None
    predictor = get_predictor(model_name)
    return {
        "decision": prediction.label,
        "probabilities": prediction.probabilities,
        "threshold": prediction.threshold,
        "warnings": prediction.warnings,
        "model": {"name": predictor.name, "revision": predictor.revision},
    }


def details(file: Optional[str]) -> dict[str, Any]:
    """The /details endpoint of gradio_client (the first model served): decision, probabilities, threshold, warnings
    and model as one JSON object."""
    model_name = model_choices()[0]
    return details_of(_predict(file, model_name, heatmap=False), model_name)


def describe(prediction: Optional[Prediction]) -> str:
    """What sits beside the decision: the calibrated probability, the threshold, and any warning."""
    if prediction is None:
        return ""
    pneumonia = prediction.probabilities["PNEUMONIA"]
    lines = [f"⚠️ **{warning}**" for warning in prediction.warnings]
    lines += [f"Calibrated PNEUMONIA probability **{pneumonia:.1%}**; the model says PNEUMONIA from **{prediction.threshold:.1%}** up, so this film is **{prediction.label}**."]
    return "\n\n".join(lines)


def show_example(file: str, model_name: str) -> tuple[Prediction, tuple[str, str], str, str]:
    """A click on an example: all that an upload shows, in one call so that it can be cached."""
    prediction = _predict(file, model_name, heatmap=True)
    heatmap = overlay_file(prediction)
    return prediction, film_and_heatmap(prediction, heatmap), heatmap, describe(prediction)


CHECK_NOTE = (
    f"Upload one .zip of labelled films: `NORMAL/` and `PNEUMONIA/` folders at any depth, or the films with a `labels.csv` "
    f"(`file,label`). At most {MAX_FILMS:,} films and {MAX_UNPACKED_BYTES // 2**20} MB unpacked; archives with links, names "
    "outside the archive or zip bombs are refused. The figures are taken at the model's stored threshold, as "
    "`pneumo-hf evaluate` takes them, and a film that cannot be read is listed, not counted. **Patients' films belong on a "
    "local copy of this app (`python app.py`), not on a public Space**; `pneumo-hf calibrate` refits the threshold on them."
)


def evaluate(archive: str, model_name: str) -> tuple[dict[str, Any], str]:
    """How well the model does on your own labelled chest X-rays, at its stored threshold: one .zip with NORMAL/ and
    PNEUMONIA/ folders, or the films and a labels.csv of file,label. Not a medical device: a research model trained on
    frontal chest films of children aged 1 to 5 from one hospital.

    Args:
        archive: One .zip of labelled films: NORMAL/ and PNEUMONIA/ folders at any depth (any capitalisation), or the
            films with a labels.csv of file,label. JPEG, PNG, WebP, BMP, TIFF, GIF or DICOM; at most 1,000 films.
        model_name: Which of the served models answers; leave it at its default.

    Returns:
        A JSON object {n, accuracy, roc_auc, sensitivity, specificity, ece, threshold, confusion: {tn, fp, fn, tp},
        errors: [{file, error}], notes}; then a per-film CSV.
    """
    return check_films(archive, model_name)


def check_films(archive: Optional[str], model_name: str, progress=gr.Progress(track_tqdm=True)) -> tuple[dict[str, Any], str]:
    """The check tab: `evaluate` with a progress bar."""
    if not archive:
        raise gr.Error("Upload a .zip of labelled films first (NORMAL/ and PNEUMONIA/ folders, or films with a labels.csv).")
    try:
        predictor = get_predictor(model_name)
    except ModelError as error:
        raise gr.Error(str(error)) from None
    table = output_path("checks", ".csv")
    try:
        summary, _ = check_archive(predictor, archive, Path(tempfile.mkdtemp(prefix="pneumo_check_")), table)
    except ArchiveError as error:
        raise gr.Error(str(error)) from None
    return summary, str(table)


def check_report(summary: Optional[dict[str, Any]], table: Optional[str]) -> tuple[str, list]:
    """The figures as a table, and the ROC (with the operating point), confusion matrix and reliability diagram."""
    if not summary or not table:
        return "", []

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
    with open(table, newline="") as file:
        rows = [row for row in csv.DictReader(file) if not row["error"]]
    labels = [int(row["label"] == "PNEUMONIA") for row in rows]
    if len(set(labels)) < 2:
        return "\n".join(lines) + "\n\nThe plots need films of both labels.", []
    folder = output_path("checks", "")
    folder.mkdir()
    plots = plot_split(labels, [float(row["probability_PNEUMONIA"]) for row in rows], summary["threshold"], folder, "site", "Your films")
    return "\n".join(lines), [str(path) for path in plots]


def preview(file: Optional[str]):
    """The uploaded file as an image (DICOM included), without the heatmap."""
    if not file:
        return None
    try:
        return load_image(file)
    except ImageError as error:
        gr.Warning(str(error))
        return None


def deleted_within_minutes() -> int:
    """Gradio's sweep runs every half of KEEP_FILES_SECONDS and deletes what is older: a file is gone within 1.5 times it."""
    return max(1, round(1.5 * KEEP_FILES_SECONDS / 60))


def _switched_on(variable: str) -> bool:
    return os.environ.get(variable, "").lower() in ("1", "true")


def privacy_line() -> str:
    """Where films and results are kept and for how long, from the settings in force."""
    analytics = "on (the operator turned them on)" if _switched_on("GRADIO_ANALYTICS_ENABLED") else "off"
    history = (
        "The operator turned Gradio's run history on: calls of this app's public API endpoints from your browser are kept in it until you clear them."
        if _switched_on("GRADIO_RUN_HISTORY")
        else "Nothing is kept in your browser (Gradio's run history is off)."
    )
    return (
        f"Uploaded films and their results are deleted from the server within {deleted_within_minutes()} minutes. {history} "
        f"Gradio's usage analytics are {analytics}. Patients' films belong on a local copy (`python app.py`), not on a public Space."
    )


def model_notice(folder: Optional[Path]) -> str:
    """What the model folder says about films unlike its training films, for the notice: the maintainers' adult
    figures (maintainers_results.json) and the domain check's own record (domain_check.json)."""
    if folder is None:
        return "This model was not measured on adults: expect it to fail on them."
    maintainers = maintainers_results(folder) or {}
    adults = [row for row in maintainers.get("splits", []) if "adult" in row["name"]]
    lines = [f"On adults' films it {'does no better than chance' if row['roc_auc'] < 0.6 else 'was measured'}: ROC-AUC {row['roc_auc']:.2f} on the maintainers' {row['name']}, {row['films']} films." for row in adults]
    if not adults:
        lines.append("It was not measured on adults: expect it to fail on them.")
    check_file = folder / "domain_check.json"
    if not check_file.is_file():
        return " ".join(lines + ["This model has no domain check: it does not warn when a film is unlike its training films."])
    earlier = " with an earlier, stricter cut" if maintainers.get("earlier_domain_check") else ""
    caught = [f"{100 * row['domain_warned']:.1f} % of that adult set{earlier}" for row in adults if row.get("domain_warned") is not None]
    reported = json.loads(check_file.read_text()).get("reported", {})
    caught += [f"{100 * share['flagged']:.1f} % of {share['films']} {readable_split(name)}" for name, share in reported.items() if "adult" in name]
    lines.append("It warns when a film looks unlike its training films" + (f": the warning caught {' and '.join(caught)}, not all." if caught else "."))
    return " ".join(lines)


def about(model_name: str) -> tuple[str, list, str]:
    """The model card's text and plots for the About tab, and the notice's figures, all read from the model folder."""
    try:
        folder = get_predictor(model_name).folder
    except ModelError as error:
        return f"**No model loaded.** {error}", [], NOTICE
    card = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", card_text(folder) if folder else "")  # the plots are shown below
    plots = [(str(path), path.stem.replace("_", " ")) for path in plot_files(folder)] if folder else []
    return card, plots, f"{NOTICE} {model_notice(folder)}\n\n{privacy_line()}"


def plot_files(folder: Path) -> list[Path]:
    """The folder's plots in the card's order: films it never saw, then validation, then anything else; each split's
    ROC, confusion matrix and reliability diagram in that order."""

    def rank(path: Path) -> tuple:
        split = next((i for i, prefix in enumerate(("test_dev_", "validation_")) if path.name.startswith(prefix)), 2)
        kind = next((i for i, name in enumerate(("roc_curve", "confusion_matrix", "reliability")) if path.stem.endswith(name)), 3)
        return split, kind, path.name

    return sorted(folder.glob("*.png"), key=rank)


@lru_cache(maxsize=1)
def _hub_examples() -> tuple[str, ...]:
    return tuple(str(path) for path in hub_examples())


def more_examples():
    """After the page is up: films from the Hub data set's test split, when the Hub can be reached (looked up once)."""
    paths = list(_hub_examples())
    return gr.Gallery(value=paths, visible=bool(paths))


def pick_more(event: gr.SelectData) -> str:
    return event.value["image"]["path"]


def build_demo(examples_dir: Optional[str] = None) -> gr.Blocks:
    """The whole page; `examples_dir` defaults to PNEUMO_EXAMPLES_DIR, else the films copied into pneumo_hf/example_films."""
    choices = model_choices()
    model_ready = choices != [DEFAULT] or (DEFAULT_MODEL_DIR / "config.json").is_file()
    examples, examples_note = find_examples(examples_dir or os.environ.get("PNEUMO_EXAMPLES_DIR"))
    with gr.Blocks(title="Pneumonia on chest X-rays", delete_cache=(max(1, KEEP_FILES_SECONDS // 2), KEEP_FILES_SECONDS)) as demo:
        gr.Markdown("# Pneumonia on chest X-rays\nDrop in a chest X-ray (JPEG, PNG, WebP, BMP, TIFF, GIF or DICOM) to see NORMAL/PNEUMONIA and where the model looked.")
        notice = gr.Markdown(f"{NOTICE}\n\n{privacy_line()}", elem_id="notice")
        if not model_ready:
            gr.Markdown("**No model is set up.** Set `PNEUMO_MODEL` to a model folder or Hub id (e.g. `PNEUMO_MODEL=runs/b0 python app.py`).")
        with gr.Tab("Predict"):
            with gr.Row():
                with gr.Column():
                    upload = gr.File(label="Chest X-ray", file_types=list(IMAGE_SUFFIXES), type="filepath")
                    model = gr.Dropdown(choices, value=choices[0], label="Model", visible=len(choices) > 1)
                    button = gr.Button("Predict", variant="primary")
                    image = gr.Image(label="Your image", type="filepath", interactive=False, height=360)
                with gr.Column():
                    label = DecisionLabel(label="Decision (calibrated probabilities below)", num_top_classes=2, elem_id="decision-label")
                    decision = gr.Markdown(elem_id="decision")
                    slider = gr.ImageSlider(
                        label="Film ◀ drag ▶ heatmap (red: where the model looked for PNEUMONIA)", type="filepath", interactive=False, height=420,
                        buttons=["fullscreen"], elem_id="film-heatmap",
                    )
                    heatmap = gr.File(label="Heatmap over the film (JPEG)", interactive=False, elem_id="heatmap-file")
                    with gr.Accordion("For programmers: what /details returns for this film", open=False):
                        details_json = gr.JSON(label="details")
            state = gr.State()
            if examples and model_ready:
                gr.Examples(
                    [[str(path)] for path in examples], inputs=image, outputs=[label, slider, heatmap, decision], fn=lambda file: show_example(file, choices[0]),
                    cache_examples=True, cache_mode="lazy", examples_per_page=8, api_visibility="private",
                    label="Examples (click one)" if len(choices) == 1 else f"Examples (click one; answered by {choices[0]})",
                )
            gr.Markdown(examples_note)
            more = gr.Gallery(label="More examples: the Hub data set's test split (click one)", visible=False, columns=8, height="auto", allow_preview=False)
        with gr.Tab("Check on your films"):
            gr.Markdown(CHECK_NOTE)
            with gr.Row():
                archive = gr.File(label="Labelled films (.zip)", file_types=[".zip"], type="filepath")
                check_button = gr.Button("Check", variant="primary")
            check_table = gr.Markdown(elem_id="check-table")
            check_plots = gr.Gallery(label="ROC (operating point marked), confusion matrix and reliability on your films", columns=3, height="auto")
            with gr.Row():
                check_json = gr.JSON(label="The figures (what /evaluate returns first)")
                check_csv = gr.File(label="Per-film results (CSV)")
        with gr.Tab("About this model"):
            card = gr.Markdown()
            plots = gr.Gallery(label="Plots: the official test split's half A (films it never saw) first, then validation", columns=3, height="auto")
        upload.change(preview, inputs=upload, outputs=image, api_visibility="private")
        # The MCP tools are the public endpoints: predict (/predict_film) and evaluate. /predict and /details serve
        # gradio_client as before ("undocumented": callable, not tools; the first model served); the page's events are private.
        check_button.click(check_films, inputs=[archive, model], outputs=[check_json, check_csv], api_visibility="private").then(
            check_report, inputs=[check_json, check_csv], outputs=[check_table, check_plots], api_visibility="private"
        )

        def then_show(event):  # after the prediction: the slider, the sentence beside the decision, the details
            event.then(film_and_heatmap, inputs=[state, heatmap], outputs=slider, api_visibility="private").then(describe, inputs=state, outputs=decision, api_visibility="private").then(
                details_of, inputs=[state, model], outputs=details_json, api_visibility="private"
            )

        then_show(gr.on([button.click, upload.upload], predict_page, inputs=[upload, model], outputs=[label, heatmap, state], api_visibility="private"))
        then_show(more.select(pick_more, outputs=upload, api_visibility="private").then(predict_page, inputs=[upload, model], outputs=[label, heatmap, state], api_visibility="private"))
        api_only = gr.Button(visible=False)  # endpoints with no control of their own on the page
        api_only.click(predict_overlay, inputs=upload, outputs=[label, heatmap], api_name="predict", api_visibility="undocumented")
        api_only.click(details, inputs=upload, outputs=details_json, api_name="details", api_visibility="undocumented")
        # Unqueued: Gradio 6.31's MCP server returns a queued tool's several outputs as one text
        api_only.click(predict, inputs=[upload, model], outputs=[details_json, heatmap], api_name="predict_film", queue=False)
        api_only.click(evaluate, inputs=[archive, model], outputs=[check_json, check_csv], api_name="evaluate", queue=False)
        model.change(about, inputs=model, outputs=[card, plots, notice], api_visibility="private")
        demo.load(about, inputs=model, outputs=[card, plots, notice], api_visibility="private")
        demo.load(more_examples, outputs=more, api_visibility="private")
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=64)
    return demo


demo = build_demo()

if __name__ == "__main__":
    demo.launch(max_file_size=MAX_FILE_BYTES, show_error=True)
