"""Benchmark (not a test): `pneumo-hf predict` at 1 and 2 processes against a plain `predict()` loop, same films.

    python tests/benchmark_predict.py --films ../shared/data/chest_xray_224/train --n 500

Prints films/s for each: the loop in process (model loaded beforehand), the CLI over its whole run (start-up
and model load included) and over its films alone (the whole run less a run on one film).
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pneumo_hf import load_predictor
from pneumo_hf.imaging import IMAGE_SUFFIXES


def timed_run(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--films", required=True, help="A folder of films (searched recursively).")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--model", default=None)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--num_workers", type=int, default=1)
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()
    every = sorted(str(p) for p in Path(args.films).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    films = every[:: max(1, len(every) // args.n)][: args.n]  # spread over both classes
    print(f"{len(films)} films from {args.films}")

    predictor = load_predictor(args.model)
    predictor.predict(films[0])  # warm-up
    per_film = []
    start = time.perf_counter()
    for film in films:
        begin = time.perf_counter()
        predictor.predict(film)
        per_film.append(time.perf_counter() - begin)
    loop = len(films) / (time.perf_counter() - start)
    print(f"predict() loop, in process: {loop:.1f} films/s (median {statistics.median(per_film) * 1000:.0f} ms a film)")

    with tempfile.TemporaryDirectory() as tmp:
        many, one = Path(tmp) / "many.txt", Path(tmp) / "one.txt"
        many.write_text("\n".join(films))
        one.write_text(films[0])
        model = ["--model", args.model] if args.model else []
        flags = ["--batch_size", str(args.batch_size), "--num_workers", str(args.num_workers), *model, *(["--bf16"] if args.bf16 else [])]
        launchers = {
            1: [sys.executable, "-m", "pneumo_hf", "predict"],
            2: [str(Path(sys.executable).with_name("accelerate")), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "pneumo_hf", "predict"],
        }
        for processes, launcher in launchers.items():
            startup = timed_run([*launcher, str(one), "--output", str(Path(tmp) / f"one{processes}.csv"), *flags])
            whole = timed_run([*launcher, str(many), "--output", str(Path(tmp) / f"many{processes}.csv"), *flags])
            films_only = (len(films) - 1) / (whole - startup)
            print(
                f"pneumo-hf predict, {processes} process(es): {len(films) / whole:.1f} films/s over the whole run ({whole:.1f} s), "
                f"{films_only:.1f} films/s over the films alone (one-film run {startup:.1f} s); {films_only / loop:.2f}x the loop"
            )


if __name__ == "__main__":
    main()
