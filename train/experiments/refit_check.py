"""Would fitting the temperature and threshold on test-like films beat the stored ones (fitted on validation)?

    python train/experiments/refit_check.py --model pneumo_hf/default_model --data_dir ../shared/data/chest_xray_224/test_dev

Cross-fits on the given films: splits them in two halves by patient (stratified by class), fits temperature and
threshold (the most specific one keeping sensitivity ≥ each --min_sensitivity) on one half and measures the other,
both ways, over --repeats random splits. The first row measures the stored temperature and threshold on the same
halves. Prints mean ± sd over the halves, and the lowest sensitivity seen.
"""

import argparse

import numpy as np
from accelerate import Accelerator
from sklearn.model_selection import StratifiedGroupKFold

from pneumo_hf import metrics
from pneumo_hf.data import load_evaluation_set
from pneumo_hf.metrics import mean_and_spread
from pneumo_hf.models import PneumoniaClassifier, resolve_model_folder
from pneumo_hf.training import evaluate, split_loader

FIGURES = {"accuracy": "accuracy", "recall": "sensitivity", "specificity": "specificity", "ece": "ECE"}


def halves(labels: np.ndarray, patients: np.ndarray, repeats: int):
    """(fit, measure) index pairs: each random patient-grouped half, measured once from the other."""
    for repeat in range(repeats):
        yield from StratifiedGroupKFold(n_splits=2, shuffle=True, random_state=repeat).split(labels, labels, patients)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Model folder or Hub repo id.")
    parser.add_argument("--data_dir", required=True, help="Labelled test-like films (NORMAL/ and PNEUMONIA/), e.g. test_dev.")
    parser.add_argument("--min_sensitivity", type=float, nargs="+", default=[0.95, 0.97])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    classifier = PneumoniaClassifier.from_pretrained(resolve_model_folder(args.model)).eval()
    films = load_evaluation_set(data_dir=args.data_dir)
    logits, labels = evaluate(classifier, split_loader(classifier, films), Accelerator(), classifier.test_time_views)  # score_split's logits, before temperature
    rows: dict[str, list[dict]] = {"stored (fitted on validation)": []}
    for fit, measure in halves(labels, np.asarray(films["patient"]), args.repeats):
        stored = metrics.probabilities(logits[measure], classifier.temperature)[:, 1]
        rows["stored (fitted on validation)"].append(metrics.classification_metrics(labels[measure], stored, classifier.threshold))
        temperature = metrics.fit_temperature(logits[fit], labels[fit])
        fitted, measured = (metrics.probabilities(logits[part], temperature)[:, 1] for part in (fit, measure))
        for target in args.min_sensitivity:
            threshold = metrics.choose_threshold(labels[fit], fitted, target)
            rows.setdefault(f"refit on the other half, sensitivity ≥ {target}", []).append(metrics.classification_metrics(labels[measure], measured, threshold))
    print(f"{args.model} on {args.data_dir}: {len(labels)} films, {2 * args.repeats} patient-grouped halves\n")
    print("| temperature and threshold | " + " | ".join(FIGURES.values()) + " | lowest sensitivity | mean threshold |")
    print("| --- " * (len(FIGURES) + 3) + "|")
    for name, found in rows.items():
        cells = [mean_and_spread([result[key] for result in found]) for key in FIGURES]
        lowest, threshold = min(result["recall"] for result in found), np.mean([result["threshold"] for result in found])
        print(f"| {name} | " + " | ".join(cells) + f" | {lowest:.3f} | {threshold:.3f} |")


if __name__ == "__main__":
    main()
