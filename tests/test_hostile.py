"""The public Space against hostile requests (issue 41): `python app.py` with psutil watching the server's memory.
No path but an upload is read, one film's memory and all films' memory are bounded, bodies are bounded and never
echoed, every answer carries the security headers, and a normal film is still answered right afterwards."""

import io
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from conftest import xray_like
from gradio_client import Client, handle_file
from PIL import Image

from pneumo_hf.examples import EXAMPLE_FILMS
from pneumo_hf.guard import NOT_UPLOADED

ROOT = Path(__file__).resolve().parents[1]
BODY_LIMIT = 256 * 1024  # lowered for the test (the default is 8 MB)


def serve(tmp: Path, **env_extra: str):
    """`python app.py` as a fresh clone serves it, its log in a file; yields (url, psutil process, log path)."""
    from test_app import free_port

    port = free_port()
    log = tmp / "server.log"
    inherited = {key: value for key, value in os.environ.items() if not key.startswith("PNEUMO_")}
    env = {**inherited, "GRADIO_SERVER_PORT": str(port), "GRADIO_TEMP_DIR": str(tmp / "cache"), **env_extra}
    with open(log, "w") as output:
        process = subprocess.Popen([sys.executable, str(ROOT / "app.py")], env=env, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "config", timeout=2).close()
            break
        except OSError:
            assert process.poll() is None, log.read_text()[-2000:]
            time.sleep(0.5)
    yield url, psutil.Process(process.pid), log
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory):
    """The app with the body limit lowered, so that the test's bodies stay small; yields (url, process, log)."""
    yield from serve(tmp_path_factory.mktemp("hostile"), PNEUMO_MAX_BODY_BYTES=str(BODY_LIMIT))


def largest_film(path: Path, seed: int = 3) -> Path:
    """The largest film the Space accepts (5,000 x 5,000 = its 25-megapixel limit), X-ray-like, as PNG or JPEG by name."""
    Image.fromarray(np.tile(xray_like(seed, (500, 500)), (10, 10))).save(path)
    return path


def answer_of(url: str, api_name: str, data: list) -> httpx.Response:
    return httpx.post(f"{url}gradio_api/run/{api_name}", json={"data": data}, timeout=120)


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_details_refuses_every_server_path_with_one_sentence(hostile_server, tmp_path):
    url, _, _ = hostile_server
    unreadable = tmp_path / "unreadable.png"
    unreadable.write_bytes(png_bytes(xray_like(1, (64, 64))))
    unreadable.chmod(0)
    paths = [str(ROOT / "pneumo_hf" / "default_model" / "test_dev_roc_curve.png"), "/etc/shadow", str(tmp_path / "missing.png"), str(tmp_path), str(unreadable), "/proc/self/environ", "file:///etc/passwd", "../" * 8 + "etc/passwd"]
    answers = {(api_name, path): answer_of(url, api_name, [{"path": path, "meta": {"_type": "gradio.FileData"}}, "x"][: 1 if api_name in ("details", "predict") else 2])
               for api_name in ("details", "predict", "predict_film", "evaluate") for path in paths}
    answers.update({("details", path): answer_of(url, "details", [{"path": path}]) for path in paths})  # gr.api: no meta needed
    for (api_name, path), answer in answers.items():
        assert NOT_UPLOADED in answer.text, (api_name, path, answer.text[:300])
        assert path not in answer.text and str(ROOT) not in answer.text and os.getcwd() not in answer.text  # Gradio's own refusal named the working directory
    assert len({answer.text for answer in answers.values()}) == 1  # no oracle: the same answer whatever the path is


def test_a_huge_film_is_refused_at_once_and_a_large_one_costs_little(hostile_server, tmp_path):
    url, server, _ = hostile_server
    client = Client(url, verbose=False)
    huge = tmp_path / "huge.png"  # 58 KB on disk, 7,745 x 7,745 decoded (issue 41)
    Image.new("L", (7745, 7745), 90).save(huge)
    with pytest.raises(Exception, match="over the 25,000,000-pixel limit"):
        client.predict(handle_file(str(huge)), api_name="/details")
    large = largest_film(tmp_path / "large.png")
    idle = server.memory_info().rss
    peak = watch_peak(server, lambda: client.predict(handle_file(str(large)), api_name="/details"))
    assert peak - idle < 2**30, f"one 25-megapixel film took {(peak - idle) / 2**20:.0f} MB more"


def test_eight_concurrent_large_films_stay_under_3_gb(hostile_server, tmp_path):
    url, server, _ = hostile_server
    large = largest_film(tmp_path / "large.png", seed=4)
    clients = [Client(url, verbose=False) for _ in range(8)]
    answers, errors = [], []

    def one(client):
        try:
            answers.append(client.predict(handle_file(str(large)), api_name="/details"))
        except Exception as error:  # what a client sees: recorded, asserted below
            errors.append(str(error))

    def all_eight():
        threads = [threading.Thread(target=one, args=(client,)) for client in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    peak = watch_peak(server, all_eight)
    assert peak < 3 * 2**30, f"8 concurrent films peaked at {peak / 2**30:.2f} GB"
    assert len(answers) + len(errors) == 8
    assert all("busy" in error for error in errors), errors  # waited, or told to try again; never an error page
    assert answers and all(answer == answers[0] for answer in answers)  # one film: one answer, however many clients at once


def test_an_oversized_body_gets_413_unread_and_unechoed(hostile_server):
    url, _, log = hostile_server
    before = log.stat().st_size
    body = b'{"data": [{"path": "' + b"A" * (4 * BODY_LIMIT) + b'"}, "x"]}'
    for api_name in ("predict_film", "evaluate", "predict", "details"):
        answer = httpx.post(f"{url}gradio_api/run/{api_name}", content=body, headers={"content-type": "application/json"}, timeout=60)
        assert answer.status_code == 413 and len(answer.content) < 300 and b"AAAA" not in answer.content
        streamed = httpx.post(f"{url}gradio_api/run/{api_name}", content=iter([body[i : i + 65536] for i in range(0, len(body), 65536)]), headers={"content-type": "application/json"}, timeout=60)
        assert streamed.status_code == 413 and b"AAAA" not in streamed.content
    # under the limit, a long junk path is refused without being quoted, to the client or into the log
    junk = answer_of(url, "details", [{"path": "A" * (BODY_LIMIT // 2)}])
    assert "AAAA" not in junk.text and NOT_UPLOADED in junk.text
    time.sleep(1)
    assert log.stat().st_size - before < 10_000


def test_every_answer_has_the_security_headers(hostile_server):
    url, _, _ = hostile_server
    for answer in (httpx.get(url, timeout=30), httpx.get(url + "config", timeout=30), answer_of(url, "details", [{"path": "/etc/passwd"}])):
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert "frame-ancestors" in answer.headers["content-security-policy"] and "huggingface.co" in answer.headers["content-security-policy"]


def test_a_normal_film_is_answered_right_afterwards(hostile_server):
    url, _, _ = hostile_server
    client = Client(url, verbose=False)
    film = next((EXAMPLE_FILMS / "PNEUMONIA").iterdir())
    answer = client.predict(handle_file(str(film)), api_name="/details")
    from pneumo_hf import load_predictor

    expected = load_predictor().predict(str(film))
    assert answer["decision"] == expected.decision
    assert abs(answer["probabilities"]["PNEUMONIA"] - expected.probabilities["PNEUMONIA"]) < 1e-3


def watch_peak(process: psutil.Process, work) -> int:
    """The largest resident memory of `process` (and its children) while `work()` runs, sampled every 20 ms."""
    peak, done = 0, threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            try:
                peak = max(peak, process.memory_info().rss + sum(child.memory_info().rss for child in process.children(recursive=True)))
            except psutil.Error:
                pass
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        work()
    finally:
        done.set()
        sampler.join()
    return peak
