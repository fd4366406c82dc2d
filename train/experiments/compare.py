"""Markdown tables comparing trained model folders: one row per folder (test_dev figures when --test_dev_dir is
given, validation figures, seed, size, CPU latency, command), then mean ± sd per model over the folders that
share one. test_dev figures are measured as `pneumo-hf evaluate` measures them (`pneumo_hf.training.score_split`).

    python train/experiments/compare.py runs/b0 runs/resnet50 --image pneumo_hf/example_films/PNEUMONIA/person545_bacteria_2288.jpeg \
        --test_dev_dir ../shared/data/chest_xray_224/test_dev
"""

import argparse
import statistics
import time
from pathlib import Path

from pneumo_hf import load_predictor, metrics
from pneumo_hf.data import load_evaluation_set
from pneumo_hf.evaluation import score_split, split_loader, split_seed
from pneumo_hf.folder import ARGUMENTS, WEIGHTS, ModelFolder
from pneumo_hf.metrics import mean_and_spread

FIGURES = {"roc_auc": "ROC-AUC", "accuracy": "accuracy", "sensitivity": "sensitivity", "specificity": "specificity", "ece": "ECE"}


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


def test_dev_figures(predictor, test_dev_dir: str) -> dict:
    """The folder's figures on the test_dev films, keyed `test_dev_<metric>`, as `pneumo-hf evaluate` measures them."""
    classifier = predictor.classifier
    scores, labels = score_split(classifier, split_loader(classifier, load_evaluation_set(data_dir=test_dev_dir)))
    return {f"test_dev_{k}": v for k, v in metrics.classification_metrics(labels, scores, classifier.threshold).items()}


def row(folder: Path, name: str, predictor, results: dict, image: str, repeats: int, splits: list[str]) -> str:
    model_folder = ModelFolder(folder)
    args = model_folder.read(ARGUMENTS)
    params = sum(p.numel() for p in predictor.classifier.parameters()) / 1e6
    size = model_folder.file(WEIGHTS).stat().st_size / 2**20
    summary = model_folder.summary()
    command = summary.command.strip() if summary else ""
    return (
        f"| {name} | {args['seed']} | {split_seed(args)} | " + " | ".join(f"{results[f'{split}_{k}']:.3f}" for split in splits for k in FIGURES)
        + f" | {results['validation_threshold']:.3f} | {params:.1f} M | {size:.1f} MB | {latency_ms(predictor, image, repeats):.0f} ms"
        + f" | {results['epochs_run']} | {results['train_seconds'] / 60:.0f} min | `{command}` |"
    )


def headers(splits: list[str]) -> list[str]:
    return [f"{'test_dev' if split == 'test_dev' else 'val'} {label}" for split in splits for label in FIGURES.values()]


def spread_table(named_results: list[tuple[str, dict]], splits: list[str]) -> str:
    """Mean ± sd of the figures per model name, over the runs of that model."""
    groups: dict[str, list[dict]] = {}
    for name, results in named_results:
        groups.setdefault(name, []).append(results)
    lines = ["| model @input | runs | " + " | ".join(headers(splits)) + " |", "| --- " * (len(splits) * len(FIGURES) + 2) + "|"]
    for name, found in groups.items():
        lines.append(f"| {name} | {len(found)} | " + " | ".join(mean_and_spread([r[f"{split}_{k}"] for r in found]) for split in splits for k in FIGURES) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--image", required=True, help="An X-ray to time predictions on.")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--test_dev_dir", help="Official test split, half A (NORMAL/ and PNEUMONIA/): its figures lead each row.")
    args = parser.parse_args()
    splits = ["test_dev", "validation"] if args.test_dev_dir else ["validation"]
    columns = ["model @input", "seed", "split seed", *headers(splits), "threshold", "params", "size on disk", "CPU latency (predict + heatmap, p50)", "epochs", "train time (2-core CPU)", "command"]
    print("| " + " | ".join(columns) + " |")
    print("| --- " * len(columns) + "|")
    named_results = []
    for folder in args.folders:
        predictor, results = load_predictor(folder), ModelFolder(folder).results().json()  # flat: test_dev_roc_auc, ...
        if args.test_dev_dir:
            results.update(test_dev_figures(predictor, args.test_dev_dir))
        name = model_name(predictor)
        print(row(folder, name, predictor, results, args.image, args.repeats, splits))
        named_results.append((name, results))
    print()
    print(spread_table(named_results, splits))


if __name__ == "__main__":
    main()
