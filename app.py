"""The Space: upload a chest X-ray (JPEG, PNG, WebP, BMP, TIFF, GIF or DICOM), get NORMAL/PNEUMONIA and a heatmap.

    python app.py                                    # http://127.0.0.1:7860, the model shipped in pneumo_hf
    PNEUMO_MODEL=runs/b0 python app.py               # a local model folder or a Hub repo id
    PNEUMO_MODELS=runs/b0,runs/r50 python app.py     # several, with a selector
    PNEUMO_EXAMPLES_DIR=../shared/data/chest_xray_224/train python app.py
"""

from __future__ import annotations

import os

# One OpenMP thread per worker, set before torch loads: two workers each spinning two threads on two cores
# served 0.64 of Gradio's ceiling, one thread each 0.87 (docs/speed.md, "The app"); torch.set_num_threads does not
# reach Gradio's worker threads.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Privacy by default: Gradio's usage analytics and its run history (every film and result kept in the visitor's browser,
# with an offer to push them to a Hub bucket) are off unless the operator turns them on; the MCP server is on.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("GRADIO_RUN_HISTORY", "False")
os.environ.setdefault("GRADIO_MCP_SERVER", "True")
import tempfile
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import gradio as gr
from gradio.components.label import LabelConfidence, LabelData
from gradio.data_classes import FileData

from pneumo_hf import ImageError, ModelError, Prediction, Predictor, guard, load_predictor, page
from pneumo_hf.cam import overlay
from pneumo_hf.examples import EXAMPLE_FILMS, find_examples, hub_examples
from pneumo_hf.folder import CONFIG, ModelFolder
from pneumo_hf.imaging import IMAGE_SUFFIXES, MAX_FILE_BYTES, load_image
from pneumo_hf.inference import DEFAULT_MODEL_DIR
from pneumo_hf.labels import NOT_A_DEVICE
from pneumo_hf.records import FilmRecord
from pneumo_hf.site_check import ArchiveError, check_archive

DEFAULT = "default (shipped in pneumo_hf)"
KEEP_FILES_SECONDS = int(os.environ.get("PNEUMO_KEEP_FILES_SECONDS", 600))  # uploads and outputs, then deleted
# Film and heatmap on the slider: Gradio 6.31 lays each image out 500 px high in a 420 px box (the film cropped, the
# heatmap 41 px above it); both fill the box instead, the whole film shown at any aspect ratio (tests/test_app.py).
SLIDER_CSS = """
#film-heatmap .content { display: block; position: relative; height: 100%; }
#film-heatmap .content img { position: absolute; top: 0; left: 0; width: 100% !important; height: 100% !important;
  max-width: 100% !important; max-height: 100% !important; object-fit: contain; transform: none; }
"""
FILM_MAX_SIDE = 1024  # films are reduced to this as they are decoded: the page's overlay, and a bounded memory per film


class DecisionLabel(gr.Label):
    """A `gr.Label` whose heading is the decision taken at the model's threshold (gr.Label alone heads with the
    largest confidence, which contradicts the decision whenever the threshold is not 0.5); the confidences stay
    the calibrated probabilities, held within [0.005, 0.994] so that its whole-percent bars never read 100% or 0% (the
    JSON of /details and /predict_film keeps the number)."""

    is_template = True  # drawn by gr.Label's own front end

    def postprocess(self, value: Any) -> Any:
        if isinstance(value, Prediction):
            ranked = sorted(value.probabilities.items(), key=lambda item: -item[1])
            return LabelData(label=value.decision, confidences=[LabelConfidence(label=name, confidence=min(max(p, 0.005), 0.994)) for name, p in ranked])
        return super().postprocess(value)


def model_choices() -> list[str]:
    """Models named by PNEUMO_MODELS (comma-separated) or PNEUMO_MODEL; else the one shipped in the package."""
    names = [name.strip() for name in os.environ.get("PNEUMO_MODELS", os.environ.get("PNEUMO_MODEL", "")).split(",") if name.strip()]
    return names or [DEFAULT]


@lru_cache(maxsize=4)
def get_predictor(name: str) -> Predictor:
    """Loaded on first use, then kept: nothing slow or networked at import time."""
    return load_predictor(None if name == DEFAULT else name)


def readable_roots() -> list[Path]:
    """Where a request's file may be: Gradio's upload cache (uploads, and what the app itself returned) and the served
    examples."""
    examples = os.environ.get("PNEUMO_EXAMPLES_DIR")
    cached = Path(os.environ.get("GRADIO_EXAMPLES_CACHE", Path.cwd() / ".gradio" / "cached_examples"))
    return [Path(gr.utils.get_upload_folder()), EXAMPLE_FILMS, cached, *([Path(examples)] if examples else [])]


def _predict(file: Optional[str], model_name: str, heatmap: bool) -> Prediction:
    """Every endpoint's film: an upload only, decoded reduced, in one of the shared model slots."""
    if not file:
        raise gr.Error("Upload a chest X-ray first (JPEG, PNG, WebP, BMP, TIFF, GIF or DICOM).")
    try:
        path = guard.uploaded(file, readable_roots())
        with guard.model_slot():
            return get_predictor(model_name).predict(load_image(path, max_side=FILM_MAX_SIDE), heatmap=heatmap)
    except (ImageError, ModelError, guard.NotUploadedError, guard.BusyError) as error:
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
    path = output_path(kind, ".jpg")
    picture.save(path, quality=90)
    return str(path)


def shown(prediction: Prediction, model_name: str) -> tuple[Prediction, tuple[str, str], str, str, dict[str, Any]]:
    """Everything the page shows of one prediction: the label confidences (headed by the decision), the slider (film |
    heatmap over it), the heatmap file, the sentence beside the decision, and what /details returns."""
    heatmap = overlay_file(prediction)
    film = overlay_file(prediction, "films", blended=False)
    return prediction, (film, heatmap), heatmap, page.describe(prediction), page.details_of(prediction, get_predictor(model_name))


def predict_page(file: Optional[str], model_name: str):
    """An upload, a click on Predict, on an example or on a Hub example: the prediction with its heatmap, all shown."""
    return shown(_predict(file, model_name, heatmap=True), model_name)


def predict(file: Optional[str]) -> tuple[Prediction, str]:
    """The /predict endpoint of gradio_client (the first model served): label confidences, then the heatmap overlay."""
    prediction = _predict(file, model_choices()[0], heatmap=True)
    return prediction, overlay_file(prediction)


def _with_notice(handler):
    """The handler with `labels.NOT_A_DEVICE` where its docstring says {NOT_A_DEVICE}: MCP clients and gradio_client
    read the docstring as the tool's description."""
    handler.__doc__ = handler.__doc__.replace("{NOT_A_DEVICE}", NOT_A_DEVICE)
    return handler


@_with_notice
def predict_film(film: str, model_name: str) -> tuple[dict[str, Any], str]:
    """NORMAL or PNEUMONIA for one frontal chest X-ray (a JPEG, PNG, WebP, BMP, TIFF, GIF or DICOM file), with a heatmap of
    where the model looked. {NOT_A_DEVICE} Expect it to fail on adults, other views and other body parts.

    Args:
        film: One frontal chest X-ray as a JPEG, PNG, WebP, BMP, TIFF, GIF or DICOM file (a URL or a base64 data URI).
        model_name: Which of the served models answers; leave it at its default.

    Returns:
        A JSON object with `decision` (NORMAL or PNEUMONIA, taken at the model's stored threshold), `probabilities`
        (calibrated), `threshold`, `warnings` (sentences for a person: read them before the decision) and `model`; then
        the heatmap over the film as an image (red: where the model saw PNEUMONIA).
    """
    prediction = _predict(film, model_name, heatmap=True)
    return page.details_of(prediction, get_predictor(model_name)), overlay_file(prediction)


def details(film: FileData) -> dict[str, Any]:
    """The /details endpoint of gradio_client (the first model served): decision, probabilities, threshold, warnings
    and model as one JSON object. Gradio does not check a `gr.api` argument's file: `_predict` reads uploads only."""
    model_name = model_choices()[0]
    path = film.get("path") if isinstance(film, dict) else getattr(film, "path", None)
    return page.details_of(_predict(path, model_name, heatmap=False), get_predictor(model_name))


@_with_notice
def evaluate(archive: str, model_name: str) -> tuple[dict[str, Any], str]:
    """How well the model does on your own labelled chest X-rays, at its stored threshold: one .zip with NORMAL/ and
    PNEUMONIA/ folders, or the films and a labels.csv of file,label. {NOT_A_DEVICE}

    Args:
        archive: One .zip of labelled films: NORMAL/ and PNEUMONIA/ folders at any depth (any capitalisation), or the
            films with a labels.csv of file,label. JPEG, PNG, WebP, BMP, TIFF, GIF or DICOM; at most 1,000 films.
        model_name: Which of the served models answers; leave it at its default.

    Returns:
        A JSON object {n, accuracy, roc_auc, sensitivity, specificity, ece, ece_pneumonia, threshold, confusion: {tn, fp, fn, tp},
        errors: [{file, error}], notes}; then a per-film CSV.
    """
    return check_films(archive, model_name)[:2]


def check_films(archive: Optional[str], model_name: str, progress=gr.Progress(track_tqdm=True)) -> tuple[dict[str, Any], str, list[FilmRecord]]:
    """The check tab: `evaluate` with a progress bar, and the films' records kept for the plots."""
    if not archive:
        raise gr.Error("Upload a .zip of labelled films first (NORMAL/ and PNEUMONIA/ folders, or films with a labels.csv).")
    table = output_path("checks", ".csv")
    try:
        path = guard.uploaded(archive, readable_roots())
        predictor = get_predictor(model_name)
        with guard.model_slot():
            summary, records = check_archive(predictor, path, Path(tempfile.mkdtemp(prefix="pneumo_check_")), table)
    except (ArchiveError, ModelError, guard.NotUploadedError, guard.BusyError) as error:
        raise gr.Error(str(error)) from None
    return summary, str(table), records


def check_report(summary: Optional[dict[str, Any]], records: Optional[list[FilmRecord]]) -> tuple[str, list]:
    """The figures as a table, and the ROC (with the operating point), confusion matrix and reliability diagram."""
    if not summary or records is None:
        return "", []
    folder = output_path("checks", "")
    folder.mkdir()
    plots = page.check_plots(records, summary["threshold"], folder)
    return page.check_table(summary) + ("" if plots else "\n\nThe plots need films of both labels."), [str(path) for path in plots]


def preview(file: Optional[str]):
    """The uploaded file as an image (DICOM included), without the heatmap."""
    if not file:
        return None
    try:
        path = guard.uploaded(file, readable_roots())
        with guard.model_slot():
            return load_image(path, max_side=FILM_MAX_SIDE)
    except (ImageError, guard.NotUploadedError, guard.BusyError) as error:
        gr.Warning(str(error))
        return None


def _switched_on(variable: str) -> bool:
    return os.environ.get(variable, "").lower() in ("1", "true")


def privacy_line() -> str:
    return page.privacy_line(KEEP_FILES_SECONDS, analytics=_switched_on("GRADIO_ANALYTICS_ENABLED"), run_history=_switched_on("GRADIO_RUN_HISTORY"))


def about(model_name: str) -> tuple[str, list, str]:
    """The model card's text and plots for the About tab, and the notice's figures, all read from the model folder."""
    try:
        folder = get_predictor(model_name).model_folder
    except ModelError as error:
        return f"**No model loaded.** {error}", [], page.NOTICE
    return page.about(folder, privacy_line())


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
    model_ready = choices != [DEFAULT] or ModelFolder(DEFAULT_MODEL_DIR).has(CONFIG)
    examples, examples_note = find_examples(examples_dir or os.environ.get("PNEUMO_EXAMPLES_DIR"))
    with gr.Blocks(title="Pneumonia on chest X-rays", delete_cache=(max(1, KEEP_FILES_SECONDS // 2), KEEP_FILES_SECONDS)) as demo:
        gr.Markdown("# Pneumonia on chest X-rays\nDrop in a chest X-ray (JPEG, PNG, WebP, BMP, TIFF, GIF or DICOM) to see NORMAL/PNEUMONIA and where the model looked.")
        notice = gr.Markdown(f"{page.NOTICE}\n\n{privacy_line()}", elem_id="notice")
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
                        label="Film ◀ drag ▶ heatmap (red: the model's strongest evidence for PNEUMONIA)", type="filepath", interactive=False, height=420,
                        buttons=["fullscreen"], elem_id="film-heatmap",
                    )
                    gr.Markdown(page.HEATMAP_NOTE, elem_id="heatmap-note")
                    heatmap = gr.File(label="Heatmap over the film (JPEG)", interactive=False, elem_id="heatmap-file")
                    with gr.Accordion("For programmers: what /details returns for this film", open=False):
                        details_json = gr.JSON(label="details")
            shown_outputs = [label, slider, heatmap, decision, details_json]
            if examples and model_ready:
                gr.Examples(
                    [[str(path)] for path in examples], inputs=image, outputs=shown_outputs, fn=lambda file: predict_page(file, choices[0]),
                    cache_examples=True, cache_mode="lazy", examples_per_page=8, api_visibility="private",
                    label="Examples (click one)" if len(choices) == 1 else f"Examples (click one; answered by {choices[0]})",
                )
            gr.Markdown(examples_note)
            more = gr.Gallery(label="More examples: the Hub data set's test split (click one)", visible=False, columns=8, height="auto", allow_preview=False)
        with gr.Tab("Check on your films"):
            gr.Markdown(page.CHECK_NOTE)
            with gr.Row():
                archive = gr.File(label="Labelled films (.zip)", file_types=[".zip"], type="filepath")
                check_button = gr.Button("Check", variant="primary")
            check_table = gr.Markdown(elem_id="check-table")
            check_records = gr.State()
            check_plots = gr.Gallery(label="ROC (operating point marked), confusion matrix and reliability on your films", columns=3, height="auto")
            with gr.Row():
                check_json = gr.JSON(label="The figures (what /evaluate returns first)")
                check_csv = gr.File(label="Per-film results (CSV)")
        with gr.Tab("About this model"):
            card = gr.Markdown()
            plots = gr.Gallery(label="Plots: the official test split's half A (films it never saw) first, then validation", columns=3, height="auto")
        upload.change(preview, inputs=upload, outputs=image, api_visibility="private")
        # The MCP tools are the public endpoints: predict_film and evaluate, named as their endpoints. /predict and /details serve
        # gradio_client as before ("undocumented": callable, not tools; the first model served); the page's events are private.
        check_button.click(check_films, inputs=[archive, model], outputs=[check_json, check_csv, check_records], api_visibility="private").then(
            check_report, inputs=[check_json, check_records], outputs=[check_table, check_plots], api_visibility="private"
        )
        gr.on([button.click, upload.upload], predict_page, inputs=[upload, model], outputs=shown_outputs, api_visibility="private")
        more.select(pick_more, outputs=upload, api_visibility="private").then(predict_page, inputs=[upload, model], outputs=shown_outputs, api_visibility="private")
        api_only = gr.Button(visible=False)  # endpoints with no control of their own on the page
        api_only.click(predict, inputs=upload, outputs=[label, heatmap], api_name="predict", api_visibility="undocumented")
        gr.api(details, api_name="details", api_visibility="undocumented")
        # Unqueued: Gradio 6.31's MCP server returns a queued tool's several outputs as one text
        api_only.click(predict_film, inputs=[upload, model], outputs=[details_json, heatmap], api_name="predict_film", queue=False)
        api_only.click(evaluate, inputs=[archive, model], outputs=[check_json, check_csv], api_name="evaluate", queue=False)
        model.change(about, inputs=model, outputs=[card, plots, notice], api_visibility="private")
        demo.load(about, inputs=model, outputs=[card, plots, notice], api_visibility="private")
        demo.load(more_examples, outputs=more, api_visibility="private")
    demo.queue(default_concurrency_limit=guard.MAX_CONCURRENT, max_size=64)
    return demo


demo = build_demo()

if __name__ == "__main__":
    demo.launch(max_file_size=MAX_FILE_BYTES, show_error=True, css=SLIDER_CSS, app_kwargs={"middleware": [guard.middleware(readable_roots)]})
