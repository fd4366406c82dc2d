"""The Space: build_demo builds; a real server answers gradio_client and a real headless Chromium."""

import importlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REAL_DATA, make_dicom, xray_like
from test_imaging import png_claiming

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(trained_folder, image_folder):
    """`python app.py` as a user runs it, on a free port, with the tiny trained model and examples."""
    port = free_port()
    env = {**os.environ, "PNEUMO_MODEL": str(trained_folder), "PNEUMO_EXAMPLES_DIR": str(image_folder), "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    process = subprocess.Popen([sys.executable, str(ROOT / "app.py")], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2).close()
            break
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(process.stdout.read())
            time.sleep(0.5)
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server, verbose=False)


def test_build_demo_without_any_model_still_builds(monkeypatch, tmp_path):
    monkeypatch.delenv("PNEUMO_MODEL", raising=False)
    monkeypatch.delenv("PNEUMO_MODELS", raising=False)
    sys.path.insert(0, str(ROOT))
    app = importlib.import_module("app")
    demo = app.build_demo(examples_dir=str(tmp_path))
    assert demo.fns  # the page and its events exist
    assert "No examples" in app.find_examples(str(tmp_path))[1]


def confidences(result) -> dict:
    return {row["label"]: row["confidence"] for row in result[0]["confidences"]}


def test_api_predicts_an_image_and_returns_label_then_heatmap(client, image_folder):
    result = client.predict(__import__("gradio_client").handle_file(str(next((image_folder / "PNEUMONIA").iterdir()))), api_name="/predict")
    assert set(confidences(result)) == {"NORMAL", "PNEUMONIA"}
    assert abs(sum(confidences(result).values()) - 1) < 1e-4
    heatmap = Image.open(result[1])
    assert heatmap.size == (40, 48)


def test_api_same_xray_same_answer_in_png_and_dicom(client, tmp_path):
    from gradio_client import handle_file

    pixels = xray_like(7, (96, 80), pneumonia=True)
    pixels[0, 0], pixels[-1, -1] = 0, 255  # full range, so DICOM windowing is the identity
    Image.fromarray(pixels).save(tmp_path / "x.png")
    (tmp_path / "x.dcm").write_bytes(make_dicom(pixels))
    Image.fromarray(pixels.astype(np.uint16) * 257).save(tmp_path / "x16.png")
    answers = [confidences(client.predict(handle_file(str(tmp_path / name)), api_name="/predict"))["PNEUMONIA"] for name in ("x.png", "x.dcm", "x16.png")]
    assert max(answers) - min(answers) < 1e-3


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="needs ../shared/data")
def test_api_predicts_a_real_xray_from_dicom(client, tmp_path):
    from gradio_client import handle_file

    real = np.asarray(Image.open(next((REAL_DATA / "NORMAL").iterdir())).convert("L"))
    (tmp_path / "real.dcm").write_bytes(make_dicom(real))
    result = client.predict(handle_file(str(tmp_path / "real.dcm")), api_name="/predict")
    assert result[0]["label"] in {"NORMAL", "PNEUMONIA"}


BAD_FILES = {
    "empty.png": (b"", "empty"),
    "text.png": (b"just some text, not an image\n" * 10, "not an image"),
    "doc.pdf.jpg": (b"%PDF-1.4\n1 0 obj<<>>endobj\n", "not an image"),
    "bomb.png": (png_claiming(100_000, 100_000), "pixel"),
    "nopixels.dcm": (make_dicom(xray_like(1), with_pixels=False), "no image"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_api_bad_files_get_a_plain_message_and_the_server_lives_on(client, tmp_path, name, image_folder):
    from gradio_client import handle_file

    data, message = BAD_FILES[name]
    (tmp_path / name).write_bytes(data)
    with pytest.raises(Exception, match=message):
        client.predict(handle_file(str(tmp_path / name)), api_name="/predict")
    assert client.predict(handle_file(str(next((image_folder / "NORMAL").iterdir()))), api_name="/predict")[0]["label"]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_browser_upload_shows_label_and_heatmap(server, image_folder, tmp_path):
    from playwright.sync_api import sync_playwright

    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    screenshot = Path(os.environ.get("PNEUMO_SCREENSHOT", tmp_path / "app.png"))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=flags)
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.goto(server)
        page.get_by_text("Not a medical device").wait_for(timeout=30_000)
        page.locator("input[type=file]").first.set_input_files(str(next((image_folder / "PNEUMONIA").iterdir())))
        page.locator("#decision").get_by_text("Decision").wait_for(timeout=60_000)
        assert page.locator("img").count() >= 2  # preview and heatmap
        page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    assert screenshot.stat().st_size > 10_000
