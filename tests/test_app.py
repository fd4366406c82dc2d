"""The Space: build_demo builds; a real server answers gradio_client and a real headless Chromium."""

import importlib.util
import json
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
from conftest import REAL_DATA, make_dicom, xray_like
from PIL import Image
from test_imaging import png_claiming

from pneumo_hf import LABELS, load_predictor
from pneumo_hf import page as page_text
from pneumo_hf.examples import EXAMPLE_FILMS, find_examples

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(tmp: Path, **env_extra: str):
    """`python app.py` as a user runs it, on a free port, its Gradio files under `tmp`; yields its URL."""
    port = free_port()
    inherited = {key: value for key, value in os.environ.items() if not key.startswith("PNEUMO_")}
    env = {**inherited, "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(tmp / "cache"), "GRADIO_EXAMPLES_CACHE": str(tmp / "examples"), **env_extra}
    process = subprocess.Popen([sys.executable, str(ROOT / "app.py")], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2).close()
            break
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(process.stdout.read()) from None
            time.sleep(0.5)
    yield f"http://127.0.0.1:{port}/"
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(trained_folder, image_folder, tmp_path_factory):
    """The app with the tiny trained model and examples from a folder."""
    yield from start_app(tmp_path_factory.mktemp("app"), PNEUMO_MODEL=str(trained_folder), PNEUMO_EXAMPLES_DIR=str(image_folder))


@pytest.fixture(scope="module")
def default_app_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("default_app")


@pytest.fixture(scope="module")
def default_server(default_app_dir):
    """The app as a fresh clone serves it (the shipped model and films), keeping files for 2 s only."""
    yield from start_app(default_app_dir, PNEUMO_KEEP_FILES_SECONDS="2")


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server, verbose=False)


def test_build_demo_without_any_model_still_builds(monkeypatch, tmp_path):
    monkeypatch.delenv("PNEUMO_MODEL", raising=False)
    monkeypatch.delenv("PNEUMO_MODELS", raising=False)
    spec = importlib.util.spec_from_file_location("app", ROOT / "app.py")
    app = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "app", app)  # Gradio reads the source of app's component classes
    spec.loader.exec_module(app)  # builds the default page too: nothing slow or networked at import
    demo = app.build_demo(examples_dir=str(tmp_path))
    assert demo.fns  # the page and its events exist
    assert "No examples" in app.find_examples(str(tmp_path))[1]


def test_a_fresh_clone_has_a_credited_gallery_of_both_classes():
    from pneumo_hf import examples

    films, note = examples.find_examples()
    per_label = {label: [film for film in films if film.parent.name == label] for label in LABELS}
    assert 6 <= len(films) <= 8 and len(per_label["NORMAL"]) >= 3 and per_label["PNEUMONIA"]
    assert "CC BY 4.0" in note and all(film.stat().st_size < 50_000 for film in films)
    credit = (examples.EXAMPLE_FILMS / "README.md").read_text()
    assert "CC BY 4.0" in credit and "doi:10.17632/rscbjbr9sj.2" in credit and all(film.name in credit for film in films)


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
def test_api_predicts_a_real_xray_from_dicom(client, tmp_path, trained_folder):
    from gradio_client import handle_file

    real = np.asarray(Image.open(next((REAL_DATA / "NORMAL").iterdir())).convert("L"))
    (tmp_path / "real.dcm").write_bytes(make_dicom(real))
    result = client.predict(handle_file(str(tmp_path / "real.dcm")), api_name="/predict")
    assert result[0]["label"] == load_predictor(trained_folder).predict((tmp_path / "real.dcm").read_bytes()).decision  # the API decides as the library


BAD_FILES = {
    "empty.png": (b"", "empty"),
    "text.png": (b"just some text, not an image\n" * 10, "not an image"),
    "doc.pdf.jpg": (b"%PDF-1.4\n1 0 obj<<>>endobj\n", "not an image"),
    "bomb.png": (png_claiming(100_000, 100_000), "pixel"),
    "nopixels.dcm": (make_dicom(xray_like(1), with_pixels=False), "no image"),
}


@pytest.mark.parametrize("api_name", ["/predict", "/details"])
@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_api_bad_files_get_a_plain_message_and_the_server_lives_on(client, tmp_path, name, api_name, image_folder):
    from gradio_client import handle_file

    data, message = BAD_FILES[name]
    (tmp_path / name).write_bytes(data)
    with pytest.raises(Exception, match=message):
        client.predict(handle_file(str(tmp_path / name)), api_name=api_name)
    assert client.predict(handle_file(str(next((image_folder / "NORMAL").iterdir()))), api_name="/predict")[0]["label"]


def test_details_endpoint_returns_one_json_object_that_agrees_with_predict(client, image_folder):
    from gradio_client import handle_file

    film = str(next((image_folder / "PNEUMONIA").iterdir()))
    details = client.predict(handle_file(film), api_name="/details")
    assert set(details) == {"decision", "probabilities", "threshold", "warnings", "model"}
    assert details["probabilities"] == pytest.approx(confidences(client.predict(handle_file(film), api_name="/predict")))
    assert details["decision"] == ("PNEUMONIA" if details["probabilities"]["PNEUMONIA"] >= details["threshold"] else "NORMAL")
    assert details["warnings"] == [] and details["model"]["revision"].startswith("sha256:")


def film_between(predictor, low: float, high: float, folder: Path) -> Path:
    """A film whose PNEUMONIA probability lies in [low, high): a blend of a NORMAL and a PNEUMONIA example film, its
    share found by bisection (the window between 0.5 and a threshold can be too narrow for any real film to fall in)."""
    normal, pneumonia = (np.asarray(Image.open(sorted((EXAMPLE_FILMS / label).glob("*.jpeg"))[0]).convert("L").resize((224, 224)), dtype=float) for label in LABELS)
    lo, hi = 0.0, 1.0
    for step in range(40):
        share = (lo + hi) / 2
        path = folder / f"blend-{step}.png"
        Image.fromarray(np.round((1 - share) * normal + share * pneumonia).astype(np.uint8)).save(path)
        found = predictor.predict(str(path)).probabilities["PNEUMONIA"]
        if low <= found < high:
            return path
        lo, hi = (share, hi) if found < low else (lo, share)
    raise AssertionError(f"no blend of the example films scores in [{low}, {high})")


def test_label_heading_is_the_decision_not_the_largest_confidence(default_server, tmp_path):
    """A film whose PNEUMONIA probability lies between 0.5 and the shipped model's threshold: its decision and its larger
    probability disagree, and gr.Label alone would head it with the larger one."""
    from gradio_client import Client, handle_file

    predictor = load_predictor()
    film = film_between(predictor, *sorted((predictor.threshold, 0.5)), tmp_path)
    client = Client(default_server, verbose=False)
    label = client.predict(handle_file(str(film)), api_name="/predict")[0]
    details = client.predict(handle_file(str(film)), api_name="/details")
    larger = max(confidences((label,)), key=confidences((label,)).get)
    assert label["label"] == details["decision"] != larger
    assert details["decision"] == ("PNEUMONIA" if details["probabilities"]["PNEUMONIA"] >= details["threshold"] else "NORMAL")
    assert details["model"]["name"] == "pneumo_hf default model"


def test_an_inverted_film_gets_the_domain_warning_naming_it(default_server, tmp_path):
    from gradio_client import Client, handle_file

    from pneumo_hf.domain import INVERTED_WARNING

    Image.fromarray(255 - np.asarray(Image.open(find_examples()[0][0]).convert("L"))).save(tmp_path / "negative.png")
    details = Client(default_server, verbose=False).predict(handle_file(str(tmp_path / "negative.png")), api_name="/details")
    assert details["warnings"][0] == INVERTED_WARNING


def test_uploads_and_outputs_leave_the_server_after_the_set_time(default_server, default_app_dir, tmp_path):
    from gradio_client import Client, handle_file

    def files() -> set[Path]:
        return {path for path in (default_app_dir / "cache").rglob("*") if path.is_file()}

    kept = files()  # the example films the page shows, kept for good
    Image.fromarray(xray_like(11, (90, 80))).save(tmp_path / "film.png")
    Client(default_server, verbose=False).predict(handle_file(str(tmp_path / "film.png")), api_name="/predict")
    served = {path for path in files() - kept if path.stat().st_size}  # (Gradio also leaves an empty temporary file)
    assert any(path.name == "film.png" for path in served) and any(path.parent.name == "overlays" for path in served)  # the upload and its overlay
    deadline = time.time() + 20
    while time.time() < deadline and any(path.exists() for path in served):
        time.sleep(0.5)
    assert not [path for path in served if path.exists()]  # PNEUMO_KEEP_FILES_SECONDS=2


def browser(playwright):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    return playwright.chromium.launch(executable_path=CHROMIUM, args=flags)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_browser_upload_shows_label_and_heatmap(server, image_folder, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        page = browser(playwright).new_page(viewport={"width": 1280, "height": 1100})
        page.goto(server)
        page.get_by_text("Not a medical device").wait_for(timeout=30_000)
        page.locator("input[type=file]").first.set_input_files(str(next((image_folder / "PNEUMONIA").iterdir())))
        page.locator("#decision").get_by_text("this film is").wait_for(timeout=60_000)
        assert page.locator("img").count() >= 2  # preview and heatmap


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_browser_slider_shows_the_whole_film_and_its_heatmap_in_one_box(server, tmp_path):
    """Portrait DICOM-sized, landscape and square films: film and heatmap laid out in the same box inside the
    component, at the film's own size (or the 1,024 px cap), and the sentence that says what the colours are."""
    from playwright.sync_api import sync_playwright

    shapes = {"portrait.dcm": ((2500, 2000), (819, 1024)), "landscape.png": ((600, 1024), (1024, 600)), "square224.png": ((224, 224), (224, 224)), "square512.png": ((512, 512), (512, 512))}
    with sync_playwright() as playwright:
        page = browser(playwright).new_page(viewport={"width": 1280, "height": 1000})
        for name, (size, natural) in shapes.items():
            film, pixels = tmp_path / name, np.asarray(Image.fromarray(xray_like(3, (size[0] // 4, size[1] // 4))).resize(size[::-1]))
            if name.endswith(".dcm"):  # a portrait as a PACS exports it
                film.write_bytes(make_dicom(pixels))
            else:
                Image.fromarray(pixels).save(film)
            page.goto(server)
            page.locator("input[type=file]").first.set_input_files(str(film))
            page.locator("#decision").get_by_text("this film is").wait_for(timeout=60_000)
            page.wait_for_function("() => [...document.querySelectorAll('#film-heatmap img')].filter(i => i.complete && i.naturalWidth).length == 2", timeout=30_000)
            found = page.evaluate("""() => {
                const box = e => { const b = e.getBoundingClientRect(); return [b.left, b.top, b.right, b.bottom]; };
                const images = [...document.querySelectorAll('#film-heatmap img')];
                return {component: box(document.querySelector('#film-heatmap')), boxes: images.map(box),
                        natural: images.map(i => [i.naturalWidth, i.naturalHeight]), fit: images.map(i => getComputedStyle(i).objectFit)};
            }""")
            film_box, heatmap_box = found["boxes"]
            assert np.allclose(film_box, heatmap_box, atol=1), (name, found)  # the divider compares the film with its own overlay
            left, top, right, bottom = found["component"]
            assert film_box[0] >= left - 1 and film_box[1] >= top - 1 and film_box[2] <= right + 1 and film_box[3] <= bottom + 1, (name, found)
            assert found["fit"] == ["contain", "contain"] and found["natural"] == [list(natural), list(natural)], (name, found)
        assert "evidence for PNEUMONIA is strongest" in page.locator("#heatmap-note").inner_text()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_browser_keeps_nothing_of_the_film_and_drags_film_against_heatmap(server, image_folder):
    """Run history off by default: after a prediction the page's localStorage, sessionStorage and IndexedDB hold nothing
    of the film or its result, and the footer has no "Runs" link. The film and its heatmap share one slider."""
    from playwright.sync_api import expect, sync_playwright

    film = next((image_folder / "PNEUMONIA").iterdir())
    with sync_playwright() as playwright:
        page = browser(playwright).new_page(viewport={"width": 1280, "height": 1100})
        page.goto(server)
        page.get_by_text("Nothing is kept in your browser").wait_for(timeout=30_000)
        page.locator("input[type=file]").first.set_input_files(str(film))
        page.locator("#decision").get_by_text("this film is").wait_for(timeout=60_000)
        sides = page.locator("#film-heatmap [data-testid=imageslider-image]")
        expect(sides).to_have_count(2, timeout=30_000)
        assert "/films/" in sides.nth(0).get_attribute("src") and "/overlays/" in sides.nth(1).get_attribute("src")
        page.wait_for_timeout(1_000)  # whatever the page would store, it has stored by now

        stored = page.evaluate("""async () => {
            const dump = (storage) => Object.keys(storage).map((key) => key + '=' + storage.getItem(key)).join('\\n');
            const databases = await indexedDB.databases();
            return {local: dump(localStorage), session: dump(sessionStorage), databases: databases.map((d) => d.name)};
        }""")
        kept = stored["local"] + stored["session"]
        assert film.name not in kept and "PNEUMONIA" not in kept and "overlays" not in kept, kept
        assert stored["databases"] == [], stored["databases"]
        assert page.locator("footer").get_by_text("Runs").count() == 0
        assert json.loads(urllib.request.urlopen(f"{server}config", timeout=10).read())["run_history"] is False

        before = sides.nth(1).evaluate("image => getComputedStyle(image).clipPath")
        box = page.locator("#film-heatmap .slider-wrap").bounding_box()
        middle_y = box["y"] + box["height"] / 2
        page.mouse.move(box["x"] + box["width"] / 2, middle_y)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.2, middle_y, steps=8)
        page.mouse.up()
        after = sides.nth(1).evaluate("image => getComputedStyle(image).clipPath")
        assert before != after, (before, after)  # the divider moved: more of the heatmap shows


ADULT = REAL_DATA.parents[1] / "adult_check" / "figure1"
FILMS = {
    "normal": next(iter(sorted((REAL_DATA / "NORMAL").glob("*.jpeg"))), None) if REAL_DATA.is_dir() else None,
    "pneumonia": EXAMPLE_FILMS / "PNEUMONIA" / "person1297_bacteria_3260.jpeg",
    "missed_pneumonia": EXAMPLE_FILMS / "PNEUMONIA" / "person1353_virus_2333.jpeg",
    "adult": next(iter(sorted(ADULT.glob("*"))), None) if ADULT.is_dir() else None,
}


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_browser_fresh_clone_shows_example_thumbnails_and_the_decision_largest(default_server, tmp_path):
    """Screenshots go to PNEUMO_SCREENSHOT_DIR when it is set."""
    from gradio_client import Client, handle_file
    from playwright.sync_api import expect, sync_playwright

    shots = Path(os.environ.get("PNEUMO_SCREENSHOT_DIR", tmp_path))
    client = Client(default_server, verbose=False)
    with sync_playwright() as playwright:
        page = browser(playwright).new_page(viewport={"width": 1280, "height": 1100})
        page.goto(default_server)
        page.get_by_text("Examples (click one)").wait_for(timeout=30_000)
        thumbnails = page.locator("img[src*='gradio_api/file=']")
        expect(thumbnails).to_have_count(len(find_examples()[0]), timeout=30_000)  # waits: the gallery renders after its heading
        thumbnails.first.click()  # an example runs a prediction
        page.locator("#decision").get_by_text("this film is").wait_for(timeout=60_000)
        for name, film in FILMS.items():
            if film is None:
                continue
            page.goto(default_server)  # a fresh page: the file box holds one file
            page.locator("input[type=file]").first.set_input_files(str(film))
            details = client.predict(handle_file(str(film)), api_name="/details")
            decision, pneumonia = details["decision"], details["probabilities"]["PNEUMONIA"]
            page.locator("#decision").get_by_text(f"probability {page_text.percent(pneumonia)}; the model says PNEUMONIA from {details['threshold']:.1%} up, so this film is {decision}").wait_for(timeout=60_000)
            assert page.locator("[data-testid=label-output-value]").inner_text().strip() == decision
            for warning in details["warnings"]:  # the domain warning, if any, beside the decision
                assert warning in page.locator("#decision").inner_text()
            page.screenshot(path=str(shots / f"app_{name}.png"), full_page=True)


def films_zip(path: Path, extra: dict[str, bytes] = None) -> Path:
    """The example films zipped as a site would, NORMAL/ and PNEUMONIA/ one folder deep, with anything in `extra`."""
    import zipfile

    with zipfile.ZipFile(path, "w") as bundle:
        for film in find_examples()[0]:
            bundle.write(film, f"site/{film.parent.name}/{film.name}")
        for name, data in (extra or {}).items():
            bundle.writestr(name, data)
    return path


def test_evaluate_endpoint_returns_the_figures_then_the_per_film_csv(default_server, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(default_server, verbose=False)
    summary, table = client.predict(handle_file(str(films_zip(tmp_path / "films.zip", {"site/NORMAL/broken.jpeg": b"x"}))), api_name="/evaluate")
    assert set(summary) == {"n", "accuracy", "roc_auc", "sensitivity", "specificity", "ece", "ece_pneumonia", "threshold", "confusion", "errors", "notes"}
    assert summary["n"] == 8 and sum(summary["confusion"].values()) == 8 and [error["file"] for error in summary["errors"]] == ["site/NORMAL/broken.jpeg"]
    lines = Path(table).read_text().splitlines()
    assert lines[0].endswith(",error,label") and len(lines) == 1 + 9
    with pytest.raises(AppError, match="points outside the archive"):
        client.predict(handle_file(str(films_zip(tmp_path / "climbing.zip", {"../../escape.jpeg": b"x"}))), api_name="/evaluate")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_browser_check_tab_uploads_a_zip_and_shows_the_table(default_server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        page = browser(playwright).new_page(viewport={"width": 1280, "height": 1100})
        page.goto(default_server)
        page.get_by_role("tab", name="Check on your films").click()
        page.get_by_text("not on a public Space").first.wait_for(timeout=30_000)
        page.locator("input[type=file][accept*='.zip']").set_input_files(str(films_zip(tmp_path / "films.zip")))
        page.get_by_role("button", name="Check").click()
        table = page.locator("#check-table table")
        table.wait_for(timeout=120_000)
        assert table.locator("tbody td").first.inner_text().strip() == "8"  # the films counted
        expect(page.locator("img[src*='site_roc_curve']").first).to_be_visible(timeout=60_000)
