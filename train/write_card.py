"""Write a model folder's card (README.md) again from the folder's own files, first scoring and plotting the films
given: the official test split's half A (`--test_dev_dir`) and, with `--validation`, the run's validation split
rebuilt from training_args.json. The figures go to all_results.json, the plots beside them.

    python train/write_card.py --model pneumo_hf/default_model --test_dev_dir ../shared/data/chest_xray_224/test_dev --validation
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from pneumo_hf import metrics
from pneumo_hf.card import write_model_card
from pneumo_hf.data import DataError, load_evaluation_set
from pneumo_hf.evaluation import score_split, split_loader, validation_split_of
from pneumo_hf.folder import ModelFolder
from pneumo_hf.models import ModelError, PneumoniaClassifier, resolve_model_folder

logger = logging.getLogger("write_card")


def score_and_plot(classifier: PneumoniaClassifier, dataset, folder: Path, prefix: str, title: str) -> dict:
    """The split's figures at the stored threshold, as `pneumo-hf evaluate` measures them, and its three plots."""
    scores, labels = score_split(classifier, split_loader(classifier, dataset))
    metrics.plot_split(labels, scores, classifier.threshold, folder, prefix, title)
    return metrics.classification_metrics(labels, scores, classifier.threshold)


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A model folder written by train/train.py or train/ensemble.py.")
    parser.add_argument("--test_dev_dir", help="Films never trained on (official test split, half A): scored, plotted, their figures lead the card.")
    parser.add_argument("--validation", action="store_true", help="Score and plot the run's validation split again (needs the training data named in training_args.json).")
    parser.add_argument("--hub_model_id", help="ORG/NAME for the card; default: the one recorded in training_summary.json.")
    args = parser.parse_args(argv)
    try:
        folder = ModelFolder(resolve_model_folder(args.model))
        if folder.summary() is None:
            raise ModelError(f"{folder.path} has no training_summary.json: retrain it with train/train.py (or rebuild it with train/ensemble.py), which write one.")
        classifier = PneumoniaClassifier.from_pretrained(folder.path).eval()
        results = folder.results()
        if args.test_dev_dir:
            results.test_dev = score_and_plot(classifier, load_evaluation_set(data_dir=args.test_dev_dir), folder.path, "test_dev", "Official test split, half A")
        if args.validation:
            results.validation = score_and_plot(classifier, validation_split_of(folder.path), folder.path, "validation", "Validation split")
    except (ModelError, DataError) as error:
        logger.error("%s", error)
        return 1
    folder.write_results(results)
    write_model_card(folder.path, args.hub_model_id)
    print(f"wrote the card of {folder.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
