"""Films per second of the app's /evaluate endpoint against `pneumo-hf predict` on the same films (docs/speed.md):

    python tests/benchmark_evaluate.py --films ../shared/data/chest_xray_224/test_dev --repeats 3

/evaluate is timed from gradio_client on a warm server (one call first loads the model), so its figure holds the
upload, the unpacking, the prediction and the CSV; `pneumo-hf predict` is timed as a whole command (start-up and
model load included) and, from its own progress bar, on the films alone.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from screenshot_page import serve

from pneumo_hf.imaging import IMAGE_SUFFIXES


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--films", required=True, help="A labelled image folder (NORMAL/ and PNEUMONIA/).")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from gradio_client import Client, handle_file

    films = sorted(path for path in Path(args.films).rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
    with tempfile.TemporaryDirectory() as folder:
        archive = Path(folder) / "films.zip"
        with zipfile.ZipFile(archive, "w") as bundle:
            for film in films:
                bundle.write(film, film.relative_to(args.films))
        process, url = serve(Path(folder))
        try:
            client = Client(url, verbose=False)
            client.predict(handle_file(str(archive)), api_name="/evaluate")  # warm: the model loads on the first call
            evaluate_seconds = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                client.predict(handle_file(str(archive)), api_name="/evaluate")
                evaluate_seconds.append(time.perf_counter() - started)
        finally:
            process.terminate()
            process.wait(timeout=30)
        command_seconds, rates = [], []
        for repeat in range(args.repeats):
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "pneumo_hf", "predict", args.films, "--output", str(Path(folder) / f"p{repeat}.csv")], capture_output=True, text=True)
            command_seconds.append(time.perf_counter() - started)
            found = re.findall(r"([\d.]+)film/s", done.stderr)
            rates.append(float(found[-1]) if found else float("nan"))
    evaluate_rate = len(films) / statistics.median(evaluate_seconds)
    command_rate = len(films) / statistics.median(command_seconds)
    print(f"{len(films)} films, median of {args.repeats}")
    print(f"/evaluate (warm server, upload to CSV)       {evaluate_rate:6.1f} films/s")
    print(f"pneumo-hf predict, whole command            {command_rate:6.1f} films/s   ratio /evaluate / command {evaluate_rate / command_rate:.2f}")
    print(f"pneumo-hf predict, films alone (its bar)    {statistics.median(rates):6.1f} films/s   ratio /evaluate / films alone {evaluate_rate / statistics.median(rates):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
