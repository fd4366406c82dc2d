"""Peak memory of `python app.py` under the largest accepted films, one and 8 at once (docs/app.md, "Limits"):

    python tests/benchmark_hostile.py
"""

import tempfile
import threading
import time
from pathlib import Path

from gradio_client import Client, handle_file
from PIL import Image
from test_hostile import largest_film, serve, watch_peak

from pneumo_hf.examples import EXAMPLE_FILMS


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="pneumo_hostile_"))
    server_run = serve(tmp)
    url, server, _ = next(server_run)
    client = Client(url, verbose=False)
    client.predict(handle_file(str(next((EXAMPLE_FILMS / "NORMAL").iterdir()))), api_name="/details")
    print(f"resident after the first prediction: {server.memory_info().rss / 2**20:.0f} MB")
    for film in (largest_film(tmp / "largest.png"), largest_film(tmp / "largest.jpg")):
        idle, start = server.memory_info().rss, time.perf_counter()
        peak = watch_peak(server, lambda film=film: client.predict(handle_file(str(film)), api_name="/details"))
        print(f"{film.name}: +{(peak - idle) / 2**20:.0f} MB at its peak, {time.perf_counter() - start:.2f} s")
    huge = tmp / "huge.png"
    Image.new("L", (7745, 7745), 90).save(huge)
    start = time.perf_counter()
    try:
        client.predict(handle_file(str(huge)), api_name="/details")
    except Exception as error:  # the refusal is the result
        print(f"7,745 x 7,745 PNG ({huge.stat().st_size / 1024:.0f} KB): refused in {time.perf_counter() - start:.2f} s: {str(error)[:90]}")
    clients, answers = [Client(url, verbose=False) for _ in range(8)], []

    def one(client):
        start = time.perf_counter()
        try:
            client.predict(handle_file(str(tmp / "largest.png")), api_name="/details")
            answers.append(("answered", time.perf_counter() - start))
        except Exception as error:  # busy or an error: counted
            answers.append((str(error)[:40], time.perf_counter() - start))

    def all_eight():
        threads = [threading.Thread(target=one, args=(client,)) for client in clients]
        [thread.start() for thread in threads]
        [thread.join() for thread in threads]

    peak = watch_peak(server, all_eight)
    seconds = sorted(elapsed for _, elapsed in answers)
    print(f"8 concurrent largest PNGs: peak {peak / 2**30:.2f} GB resident; {sum(kind == 'answered' for kind, _ in answers)} answered in {seconds[0]:.2f}-{seconds[-1]:.2f} s")
    print(f"resident afterwards: {server.memory_info().rss / 2**20:.0f} MB")
    next(server_run, None)


if __name__ == "__main__":
    main()
