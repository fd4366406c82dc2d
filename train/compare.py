"""Markdown tables comparing trained model folders: one row per folder (validation figures, seed, size,
CPU latency, command), then mean ± sd per model over the folders that share one.

    python train/compare.py runs/b0 runs/resnet50 runs/vit_tiny --image ../shared/data/chest_xray_224/train/NORMAL/IM-0115-0001.jpeg
"""

import argparse
import json
import statistics
import time
from pathlib import Path

from pneumo_hf import load_predictor
from pneumo_hf.metrics import mean_and_spread
from pneumo_hf.training import split_seed

FIGURES = {"roc_auc": "val ROC-AUC", "accuracy": "val accuracy", "recall": "val sensitivity", "specificity": "val specificity", "ece": "val ECE"}


def latency_ms(predictor, image: str, repeats: int) -> float:
    """Median wall time of one predict(heatmap=True) on this machine, after one warm-up."""
    predictor.predict(image, heatmap=True)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predictor.predict(image, heatmap=True)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def model_name(predictor) -> str:
    """'efficientnet_b0 @160 + TTA': architecture, input side, and whether it averages test-time views."""
    classifier = predictor.classifier
    side = classifier.data_config["input_size"][-1]
    return f"{classifier.architecture} @{side}" + (" + TTA" if classifier.test_time_views else "")


def row(folder: Path, name: str, predictor, results: dict, image: str, repeats: int) -> str:
    args = json.loads((folder / "training_args.json").read_text())
    params = sum(p.numel() for p in predictor.classifier.parameters()) / 1e6
    size = (folder / "model.safetensors").stat().st_size / 2**20
    command = (folder / "README.md").read_text().split("```\n")[-2].strip() if (folder / "README.md").is_file() else ""
    return (
        f"| {name} | {args['seed']} | {split_seed(args)} | " + " | ".join(f"{results[f'validation_{k}']:.3f}" for k in FIGURES)
        + f" | {results['validation_threshold']:.3f} | {params:.1f} M | {size:.1f} MB | {latency_ms(predictor, image, repeats):.0f} ms"
        + f" | {results['epochs_run']} | {results['train_seconds'] / 60:.0f} min | `{command}` |"
    )


def spread_table(named_results: list[tuple[str, dict]]) -> str:
    """Mean ± sd of the validation figures per model name, over the runs of that model."""
    groups: dict[str, list[dict]] = {}
    for name, results in named_results:
        groups.setdefault(name, []).append(results)
    lines = ["| model @input | runs | " + " | ".join(FIGURES.values()) + " |", "| --- " * (len(FIGURES) + 2) + "|"]
    for name, found in groups.items():
        lines.append(f"| {name} | {len(found)} | " + " | ".join(mean_and_spread([r[f"validation_{k}"] for r in found]) for k in FIGURES) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--image", required=True, help="An X-ray to time predictions on.")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    columns = ["model @input", "seed", "split seed", *FIGURES.values(), "threshold", "params", "size on disk", "CPU latency (predict + heatmap, p50)", "epochs", "train time (2-core CPU)", "command"]
    print("| " + " | ".join(columns) + " |")
    print("| --- " * len(columns) + "|")
    named_results = []
    for folder in args.folders:
        predictor, results = load_predictor(folder), json.loads((folder / "all_results.json").read_text())
        name = model_name(predictor)
        print(row(folder, name, predictor, results, args.image, args.repeats))
        named_results.append((name, results))
    print()
    print(spread_table(named_results))


if __name__ == "__main__":
    main()
