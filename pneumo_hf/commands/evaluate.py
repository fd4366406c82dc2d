"""`pneumo-hf evaluate`: measure a model folder (or Hub id) on a labelled split: a table on screen, JSON and PNGs on disk.

    python train/evaluate.py --model runs/b0 --data_dir path/to/test --output_json runs/b0/test.json
    python train/evaluate.py --model ORG/NAME --dataset_name hf-vision/chest-xray-pneumonia --split test
    python train/evaluate.py --model runs/b0 --validation_split --tta zoom   # the run's own validation split
"""

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from accelerate import Accelerator

from pneumo_hf import metrics
from pneumo_hf.commands import as_flags
from pneumo_hf.data import load_evaluation_set
from pneumo_hf.errors import UserError
from pneumo_hf.evaluation import score_split, split_loader, validation_split_of
from pneumo_hf.models import PneumoniaClassifier, resolve_model_folder
from pneumo_hf.tta import VIEWS

logger = logging.getLogger("evaluate")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pneumo-hf evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Model folder or Hub repo id.")
    parser.add_argument("--dataset_name", help="Hub data set id or local copy (with --split).")
    parser.add_argument("--split", default="test", help="Split of --dataset_name (default: test).")
    parser.add_argument("--data_dir", help="Image folder with NORMAL/ and PNEUMONIA/ subfolders.")
    parser.add_argument("--validation_split", action="store_true", help="The patient-grouped validation split the model was trained with (from its training_args.json).")
    parser.add_argument("--tta", nargs="*", default=None, choices=sorted(VIEWS), help="Average the logits over the image and these test-time views (default: the model's stored views, as load_predictor() does; `--tta` alone for none).")
    parser.add_argument("--output_json", default="eval_results.json", help="Where the metrics go; the PNGs go beside it.")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--threshold", type=float, help="Decide at this threshold instead of the model's stored one.")
    args = parser.parse_args(argv)
    if sum(map(bool, (args.dataset_name, args.data_dir, args.validation_split))) != 1:
        parser.error("pass exactly one of --dataset_name (with --split), --data_dir and --validation_split")
    return args


def run(args: argparse.Namespace) -> dict:
    folder = resolve_model_folder(args.model)
    classifier = PneumoniaClassifier.from_pretrained(folder)
    dataset = validation_split_of(folder) if args.validation_split else load_evaluation_set(args.dataset_name, args.split, args.data_dir)
    accelerator = Accelerator()
    model, loader = accelerator.prepare(classifier, split_loader(classifier, dataset, args.batch_size))
    views = list(classifier.test_time_views) if args.tta is None else args.tta  # what the stored threshold and temperature were fitted with
    scores, labels = score_split(accelerator.unwrap_model(model), loader, accelerator, views)
    threshold = classifier.threshold if args.threshold is None else args.threshold
    data = "validation split" if args.validation_split else args.data_dir or f"{args.dataset_name}:{args.split}"
    results = {"model": str(args.model), "data": data, "tta": views, **metrics.classification_metrics(labels, scores, threshold)}
    output = Path(args.output_json)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    metrics.plot_roc(labels, scores, output.with_name(output.stem + "_roc_curve.png"))
    metrics.plot_confusion(labels, scores, threshold, output.with_name(output.stem + "_confusion_matrix.png"))
    return results


def print_table(results: dict) -> None:
    print(f"{'metric':<14}value")
    for key in ("n", "accuracy", "precision", "sensitivity", "specificity", "f1", "roc_auc", "ece", "threshold"):
        value = results[key]
        print(f"{key:<14}{value if isinstance(value, int) else f'{value:.4f}'}")
    (tn, fp), (fn, tp) = results["confusion_matrix"]
    print(f"{'confusion':<14}TN {tn}  FP {fp}  FN {fn}  TP {tp}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    args = parse_args(argv)
    try:
        results = run(args)
    except UserError as error:
        logger.error("%s", as_flags(str(error)))
        return 1
    print_table(results)
    print(f"wrote {args.output_json}")
    return 0
