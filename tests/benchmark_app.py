"""Benchmark (not a test): the app against a no-model Gradio app of the same API shape, under load.

    python tests/benchmark_app.py --image ../shared/data/chest_xray_224/train/NORMAL/IM-0295-0001.jpeg

Prints in-process latency of one prediction (with and without heatmap), then, for each app and each
client count (8 clients for 20 s, 32 clients for 60 s by default), requests per second, p50 and p95
latency, errors and lost requests (no answer within --request_timeout), and the app/no-model ratio.
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APPS = {"no-model": ROOT / "tests" / "null_app.py", "pneumo-hf": ROOT / "app.py"}


def p50_p95(seconds: list[float]) -> tuple[float, float]:
    ordered = sorted(seconds)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def in_process(model: str, image: str, repeats: int) -> None:
    from pneumo_hf import load_predictor

    predictor = load_predictor(model)
    predictor.predict(image, heatmap=True)  # warm-up
    for heatmap in (True, False):
        p50, p95 = p50_p95([timed(lambda heatmap=heatmap: predictor.predict(image, heatmap=heatmap)) for _ in range(repeats)])
        print(f"in process, predict(heatmap={heatmap}): p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms (n={repeats})")


@dataclass
class Load:
    latencies: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    lost: int = 0
    seconds: float = 0.0


def serve(script: Path, env_extra: dict) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False", **env_extra}
    server = subprocess.Popen([sys.executable, str(script)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2).close()
            return server, f"http://127.0.0.1:{port}/"
        except OSError:
            if server.poll() is not None:
                raise RuntimeError(f"{script} exited with {server.returncode}") from None
            time.sleep(0.2)


def load(url: str, image: str, clients: int, seconds: float, request_timeout: float) -> Load:
    """`clients` gradio_client clients, each sending the film again as soon as it has an answer, for `seconds`."""
    from gradio_client import Client, handle_file

    pool = [Client(url, verbose=False) for _ in range(clients)]
    result, lock = Load(), threading.Lock()
    deadline = time.perf_counter() + seconds

    def run(client) -> None:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            job = client.submit(handle_file(image), api_name="/predict")
            try:
                job.result(timeout=request_timeout)
                with lock:
                    result.latencies.append(time.perf_counter() - start)
            except FutureTimeout:
                with lock:
                    result.lost += 1
            except Exception as error:  # what the server answered instead of a result
                with lock:
                    result.errors.append(str(error)[:120])

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as executor:
        list(executor.map(run, pool))
    result.seconds = time.perf_counter() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="Model folder or Hub id for app.py; default: the model shipped in pneumo_hf.")
    parser.add_argument("--image", required=True)
    parser.add_argument("--repeats", type=int, default=20, help="In-process predictions per measurement.")
    parser.add_argument("--loads", nargs="+", default=["8:20", "32:60"], help="CLIENTS:SECONDS pairs.")
    parser.add_argument("--request_timeout", type=float, default=60.0)
    parser.add_argument("--skip_in_process", action="store_true")
    args = parser.parse_args()
    if not args.skip_in_process:
        in_process(args.model, args.image, args.repeats)
    loads = [tuple(map(float, pair.split(":"))) for pair in args.loads]
    rates: dict = {}
    print(f"{'app':10} {'clients':>7} {'seconds':>7} {'answers':>7} {'req/s':>6} {'p50 s':>6} {'p95 s':>6} {'errors':>6} {'lost':>4}")
    for name, script in APPS.items():
        server, url = serve(script, {"PNEUMO_MODEL": args.model} if args.model and name == "pneumo-hf" else {})
        try:
            from gradio_client import Client, handle_file

            Client(url, verbose=False).predict(handle_file(args.image), api_name="/predict")  # warm-up: loads the model
            for clients, seconds in loads:
                result = load(url, args.image, int(clients), seconds, args.request_timeout)
                rate = len(result.latencies) / result.seconds
                rates[name, int(clients)] = rate
                p50, p95 = p50_p95(result.latencies) if result.latencies else (float("nan"),) * 2
                print(f"{name:10} {int(clients):>7} {result.seconds:>7.1f} {len(result.latencies):>7} {rate:>6.2f} {p50:>6.2f} {p95:>6.2f} {len(result.errors):>6} {result.lost:>4}", flush=True)
                for message in sorted(set(result.errors)):
                    print(f"    error x{result.errors.count(message)}: {message}")
        finally:
            server.terminate()
            server.wait(timeout=30)
    for clients, _ in loads:
        print(f"ratio pneumo-hf / no-model at {int(clients)} clients: {rates['pneumo-hf', int(clients)] / rates['no-model', int(clients)]:.2f}")


if __name__ == "__main__":
    main()
