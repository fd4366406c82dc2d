"""Benchmark (not a test): latency of one prediction with heatmap, in process and through the app's API.

    python tests/benchmark_app.py --model runs/b0 --image ../shared/data/chest_xray_224/train/NORMAL/IM-0115-0001.jpeg

Prints the median (p50) and p95 of sequential requests, and requests per second with 8 concurrent clients.
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def percentiles(seconds: list[float]) -> str:
    ordered = sorted(seconds)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"p50 {statistics.median(ordered) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms (n={len(ordered)})"


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def in_process(model: str, image: str, repeats: int) -> None:
    from pneumo_hf import load_predictor

    predictor = load_predictor(model)
    predictor.predict(image, heatmap=True)  # warm-up
    print("in process, predict(heatmap=True):", percentiles([timed(lambda: predictor.predict(image, heatmap=True)) for _ in range(repeats)]))
    print("in process, predict(heatmap=False):", percentiles([timed(lambda: predictor.predict(image)) for _ in range(repeats)]))


def through_api(model: str, image: str, repeats: int, clients: int) -> None:
    from gradio_client import Client, handle_file

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    if model:
        env["PNEUMO_MODEL"] = model
    server = subprocess.Popen([sys.executable, str(ROOT / "app.py")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        started = time.perf_counter()
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2).close()
                break
            except OSError:
                time.sleep(0.2)
        print(f"app serving after {time.perf_counter() - started:.1f} s")
        url = f"http://127.0.0.1:{port}/"
        client = Client(url, verbose=False)
        client.predict(handle_file(image), api_name="/predict")  # warm-up: loads the model
        print("API /predict, one client:", percentiles([timed(lambda: client.predict(handle_file(image), api_name="/predict")) for _ in range(repeats)]))
        pool = [Client(url, verbose=False) for _ in range(clients)]
        per_client = max(1, repeats // 2)
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as executor:
            list(executor.map(lambda c: [c.predict(handle_file(image), api_name="/predict") for _ in range(per_client)], pool))
        elapsed = time.perf_counter() - start
        print(f"API /predict, {clients} concurrent clients: {clients * per_client / elapsed:.2f} requests/s ({clients * per_client} requests in {elapsed:.1f} s)")
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="Model folder or Hub id; default: the model shipped in pneumo_hf.")
    parser.add_argument("--image", required=True)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--skip_api", action="store_true")
    args = parser.parse_args()
    in_process(args.model, args.image, args.repeats)
    if not args.skip_api:
        through_api(args.model, args.image, args.repeats, args.clients)


if __name__ == "__main__":
    main()
