"""Time per film of `pneumo-hf predict --dicom_out --heatmaps` on a PACS-like export, and how many films went through
the model (through the members' first convolutions, counted by a hook: every pass, the heatmap's included), median of --repeats fresh runs:

    python tests/benchmark_dicom_out.py --source ../shared/data/chest_xray_224/test_dev --films 24 --repeats 3

The export: the first --films films of --source as 12-bit CR DICOM files named by UID, in two studies.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from pydicom.uid import generate_uid
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from test_dicom_out import cr_film  # noqa: E402

from pneumo_hf import load_predictor  # noqa: E402
from pneumo_hf.commands import predict  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="A folder of JPEG or PNG films.")
    parser.add_argument("--films", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    films = sorted(p for p in args.source.rglob("*") if p.suffix.lower() in {".jpeg", ".jpg", ".png"})[: args.films]
    passes = []

    def count(module, inputs, output):  # every member's first convolution reads the 3-channel film
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            passes.append(len(inputs[0]))

    entries = sum(isinstance(module, nn.Conv2d) and module.in_channels == 3 for module in load_predictor().classifier.modules())

    torch.nn.modules.module.register_module_forward_hook(count)
    seconds = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as work:
            export = Path(work) / "export"
            export.mkdir()
            studies = [generate_uid(), generate_uid()]
            for index, film in enumerate(films):
                cr_film(film, export / generate_uid(), studies[index % 2], "Doe^Jane")
            passes.clear()
            start = time.perf_counter()
            code = predict.main([str(export), "--output", f"{work}/out.csv", "--dicom_out", f"{work}/results", "--heatmaps", f"{work}/overlays", "--num_workers", "0"])
            seconds.append(time.perf_counter() - start)
            assert code == 0, code
            through = sum(passes) / entries
    print(f"{len(films)} DICOM films, --dicom_out --heatmaps: median {statistics.median(seconds) / len(films) * 1000:.0f} ms per film "
          f"(runs {', '.join(f'{s:.1f}' for s in seconds)} s, model load included); {through:.0f} films through the model, {through / len(films):.2f} per film")


if __name__ == "__main__":
    main()
