"""The Space: upload a chest X-ray (JPEG, PNG, WebP, BMP, TIFF, GIF or DICOM), get NORMAL/PNEUMONIA and a Grad-CAM heatmap.

    python app.py                                    # http://127.0.0.1:7860, the model shipped in pneumo_hf
    PNEUMO_MODEL=runs/b0 python app.py               # a local model folder or a Hub repo id
    PNEUMO_MODELS=runs/b0,runs/r50 python app.py     # several, with a selector
    PNEUMO_EXAMPLES_DIR=../shared/data/chest_xray_224/train python app.py
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from typing import Optional

import gradio as gr

from pneumo_hf import ImageError, ModelError, Prediction, Predictor, load_predictor
from pneumo_hf.cam import overlay
from pneumo_hf.examples import find_examples
from pneumo_hf.imaging import MAX_FILE_BYTES, load_image
from pneumo_hf.inference import DEFAULT_MODEL_DIR

DEFAULT = "default (shipped in pneumo_hf)"
FILE_TYPES = [".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".dcm"]
NOTICE = (
    "**Not a medical device.** A research demo trained on pediatric (age 1–5) anterior-posterior chest films "
    "from one hospital. Do not use it to diagnose or treat anyone."
)


def model_choices() -> list[str]:
    """Models named by PNEUMO_MODELS (comma-separated) or PNEUMO_MODEL; else the one shipped in the package."""
    names = [name.strip() for name in os.environ.get("PNEUMO_MODELS", os.environ.get("PNEUMO_MODEL", "")).split(",") if name.strip()]
    return names or [DEFAULT]


@lru_cache(maxsize=4)
def get_predictor(name: str) -> Predictor:
    """Loaded on first use, then kept: nothing slow or networked at import time."""
    return load_predictor(None if name == DEFAULT else name)


def predict(file: Optional[str], model_name: str) -> tuple[dict[str, float], object, Optional[Prediction]]:
    """The /predict endpoint: label confidences, then the heatmap overlay."""
    if not file:
        raise gr.Error("Upload a chest X-ray first (JPEG, PNG, WebP, BMP, TIFF, GIF or DICOM).")
    try:
        prediction = get_predictor(model_name).predict(file, heatmap=True)
    except (ImageError, ModelError) as error:
        raise gr.Error(str(error)) from None
    return prediction.probabilities, overlay(prediction.image, prediction.heatmap), prediction


def describe(prediction: Optional[Prediction]) -> str:
    if prediction is None:
        return ""
    lines = [f"### Decision: **{prediction.label}**", f"PNEUMONIA probability {prediction.probabilities['PNEUMONIA']:.3f}, decided at the model's threshold {prediction.threshold:.3f}."]
    lines += [f"⚠️ {warning}" for warning in prediction.warnings]
    return "\n\n".join(lines)


def preview(file: Optional[str]):
    """The uploaded file as an image (DICOM included), without the heatmap."""
    if not file:
        return None
    try:
        return load_image(file)
    except ImageError as error:
        gr.Warning(str(error))
        return None


def about(model_name: str) -> tuple[str, list]:
    """The model card's text and plots for the About tab."""
    try:
        folder = get_predictor(model_name).folder
    except ModelError as error:
        return f"**No model loaded.** {error}", []
    card = (folder / "README.md").read_text() if folder and (folder / "README.md").is_file() else "This model folder has no model card."
    card = re.sub(r"\A---\n.*?\n---\n", "", card, flags=re.S)  # YAML metadata
    card = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", card)  # the plots are shown below
    plots = [str(p) for p in sorted(folder.glob("*.png"))] if folder else []
    return card, plots


def build_demo(examples_dir: Optional[str] = None) -> gr.Blocks:
    """The whole page; `examples_dir` defaults to PNEUMO_EXAMPLES_DIR."""
    choices = model_choices()
    examples, examples_note = find_examples(examples_dir or os.environ.get("PNEUMO_EXAMPLES_DIR"))
    with gr.Blocks(title="Pneumonia on chest X-rays") as demo:
        gr.Markdown("# Pneumonia on chest X-rays\nDrop in a chest X-ray (JPEG, PNG, WebP, BMP, TIFF, GIF or DICOM) to see NORMAL/PNEUMONIA and where the model looked.")
        gr.Markdown(NOTICE, elem_id="notice")
        if choices == [DEFAULT] and not (DEFAULT_MODEL_DIR / "config.json").is_file():
            gr.Markdown("**No model is set up.** Set `PNEUMO_MODEL` to a model folder or Hub id (e.g. `PNEUMO_MODEL=runs/b0 python app.py`).")
        with gr.Tab("Predict"):
            with gr.Row():
                with gr.Column():
                    upload = gr.File(label="Chest X-ray", file_types=FILE_TYPES, type="filepath")
                    model = gr.Dropdown(choices, value=choices[0], label="Model", visible=len(choices) > 1)
                    button = gr.Button("Predict", variant="primary")
                    image = gr.Image(label="Your image", type="pil", interactive=False, height=360)
                with gr.Column():
                    label = gr.Label(label="Probabilities", num_top_classes=2)
                    decision = gr.Markdown(elem_id="decision")
                    heatmap = gr.Image(label="Grad-CAM heatmap (where the model looked for PNEUMONIA)", type="pil", interactive=False, height=360)
            state = gr.State()
            gr.Markdown(examples_note)
            if examples:
                gr.Examples([[str(p)] for p in examples], inputs=[upload], label="Examples (click one)")
        with gr.Tab("About this model"):
            card = gr.Markdown()
            plots = gr.Gallery(label="Validation plots", columns=3, height="auto")
        upload.change(preview, inputs=upload, outputs=image, api_visibility="private")
        gr.on([button.click, upload.upload], predict, inputs=[upload, model], outputs=[label, heatmap, state], api_name="predict").then(
            describe, inputs=state, outputs=decision, api_visibility="private"
        )
        model.change(about, inputs=model, outputs=[card, plots], api_visibility="private")
        demo.load(about, inputs=model, outputs=[card, plots], api_visibility="private")
    demo.queue(default_concurrency_limit=2, max_size=32)
    return demo


demo = build_demo()

if __name__ == "__main__":
    demo.launch(max_file_size=MAX_FILE_BYTES, show_error=True)
