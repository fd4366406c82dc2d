"""A markdown table comparing trained model folders: validation figures, size, CPU latency, command.

    python train/compare.py runs/b0 runs/resnet50 runs/vit_tiny --image ../shared/data/chest_xray_224/train/NORMAL/IM-0115-0001.jpeg
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone without installing

from pneumo_hf import load_predictor  # noqa: E402


def latency_ms(predictor, image: str, repeats: int) -> float:
    """Median wall time of one predict(heatmap=True) on this machine, after one warm-up."""
    predictor.predict(image, heatmap=True)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predictor.predict(image, heatmap=True)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def row(folder: Path, image: str, repeats: int) -> str:
    results = json.loads((folder / "all_results.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    predictor = load_predictor(folder)
    params = sum(p.numel() for p in predictor.classifier.parameters()) / 1e6
    size = (folder / "model.safetensors").stat().st_size / 2**20
    command = (folder / "README.md").read_text().split("```\n")[-2].strip() if (folder / "README.md").is_file() else ""
    figures = [results[f"validation_{k}"] for k in ("roc_auc", "accuracy", "recall", "specificity", "ece")]
    name = config.get("architecture", config.get("model_type"))
    side = predictor.classifier.data_config["input_size"][-1]
    return (
        f"| {name} @{side} | " + " | ".join(f"{v:.3f}" for v in figures)
        + f" | {results['validation_threshold']:.3f} | {params:.1f} M | {size:.1f} MB | {latency_ms(predictor, image, repeats):.0f} ms"
        + f" | {results['epochs_run']} | {results['train_seconds'] / 60:.0f} min | `{command}` |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--image", required=True, help="An X-ray to time predictions on.")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    print("| model @input | val ROC-AUC | val accuracy | val sensitivity | val specificity | val ECE | threshold | params | size on disk | CPU latency (predict + heatmap, p50) | epochs | train time (2-core CPU) | command |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for folder in args.folders:
        print(row(folder, args.image, args.repeats))


if __name__ == "__main__":
    main()
