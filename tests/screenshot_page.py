"""The README's picture: start `python app.py` on a free port, upload an example film in headless Chromium (Debian's,
through Playwright), wait for the decision and the heatmap, and save the page as docs/page.png. Run it again when the
page changes:

    python tests/screenshot_page.py                       # writes docs/page.png
    python tests/screenshot_page.py --output /tmp/page.png --film path/to/film.dcm
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILM = ROOT / "pneumo_hf" / "example_films" / "PNEUMONIA" / "person1297_bacteria_3260.jpeg"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def serve(folder: Path) -> tuple[subprocess.Popen, str]:
    """`python app.py` as a visitor meets it, its Gradio files in `folder`; returns the process and its URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_TEMP_DIR": str(folder / "cache"), "GRADIO_EXAMPLES_CACHE": str(folder / "examples")}
    process = subprocess.Popen([sys.executable, str(ROOT / "app.py")], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(240):
        try:
            urllib.request.urlopen(url + "config", timeout=2).close()
            return process, url
        except OSError:
            if process.poll() is not None:
                raise SystemExit("app.py stopped before it served the page; run `python app.py` to see why.") from None
            time.sleep(0.5)
    process.terminate()
    raise SystemExit("app.py did not answer within two minutes.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(ROOT / "docs" / "page.png"))
    parser.add_argument("--film", default=str(FILM), help="The film uploaded for the picture.")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("Debian's chromium is not installed: `apt-get install chromium` (.ci/run does).", file=sys.stderr)
        return 1
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as folder:
        process, url = serve(Path(folder))
        try:
            with sync_playwright() as playwright:
                page = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS).new_page(viewport={"width": 1280, "height": 1000})
                page.goto(url)
                page.get_by_text("Examples (click one)").wait_for(timeout=60_000)
                page.locator("input[type=file]").first.set_input_files(args.film)
                page.locator("#decision").get_by_text("this film is").wait_for(timeout=120_000)
                page.locator("img[src*='overlays']").first.wait_for(timeout=60_000)
                page.screenshot(path=args.output, full_page=True)
        finally:
            process.terminate()
            process.wait(timeout=30)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
