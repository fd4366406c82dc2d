"""A no-model Gradio app with the API shape of app.py (file in; label and image out), for tests/benchmark_app.py:
what Gradio itself can serve on this machine.

    GRADIO_SERVER_PORT=7862 python tests/null_app.py
"""

import gradio as gr
from PIL import Image


def predict(file: str) -> tuple[dict[str, float], Image.Image]:
    return {"NORMAL": 0.5, "PNEUMONIA": 0.5}, Image.open(file)


with gr.Blocks() as demo:
    upload = gr.File(type="filepath")
    label, image = gr.Label(), gr.Image()
    upload.upload(predict, inputs=upload, outputs=[label, image], api_name="predict")
demo.queue(default_concurrency_limit=8, max_size=64)

if __name__ == "__main__":
    demo.launch()
