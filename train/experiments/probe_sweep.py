"""Linear probes of a pretrained checkpoint on cached features, alone and averaged with a trained model folder.

    python train/experiments/probe_sweep.py --checkpoint checkpoints/tf_efficientnet_lite0 \
        --train_dir ../shared/data/chest_xray_224/train --test_dev_dir ../shared/data/chest_xray_224/test_dev \
        --with_model pneumo_hf/default_model --c 0.001 0.003 0.01 0.03

Features are computed once per split and checkpoint (pneumo_hf.linear_probe, kept beside the film cache), so a sweep
takes seconds after the first run. Every row is fitted as train/train.py fits a probe: the regression on the train
split, temperature and threshold (--min_sensitivity) on the patient-grouped validation split (--split_seed 7); the
test_dev columns are the official test split, half A. With --with_model, the probe's temperature-scaled logit is
averaged with the model folder's calibrated logit (weights --weights), then temperature and threshold refitted.
"""

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from pneumo_hf import metrics
from pneumo_hf.data import load_evaluation_set, load_splits
from pneumo_hf.evaluation import score_split, split_loader
from pneumo_hf.film_cache import cached_films
from pneumo_hf.linear_probe import fit_linear_head, pooled_features
from pneumo_hf.models import PneumoniaClassifier, build_classifier


def model_logits(folder: str, dataset) -> np.ndarray:
    """The model folder's calibrated PNEUMONIA logit on every film, as load_predictor() scores it."""
    classifier = PneumoniaClassifier.from_pretrained(folder).eval()
    scores, _ = score_split(classifier, split_loader(classifier, dataset))
    scores = np.clip(scores, 1e-7, 1 - 1e-7)
    return np.log(scores / (1 - scores))


def decide(validation_logit, validation_labels, test_logit, test_labels, min_sensitivity):
    """Temperature and threshold on validation, then the test_dev figures at them."""
    pair = lambda z: np.stack([-z / 2, z / 2], axis=1)  # noqa: E731
    temperature = metrics.fit_temperature(pair(validation_logit), validation_labels)
    validation_scores = metrics.probabilities(pair(validation_logit), temperature)[:, 1]
    threshold = metrics.choose_threshold(validation_labels, validation_scores, min_sensitivity)
    found = metrics.classification_metrics(test_labels, metrics.probabilities(pair(test_logit), temperature)[:, 1], threshold)
    return found, metrics.classification_metrics(validation_labels, validation_scores, threshold)["roc_auc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--train_dir", required=True)
    parser.add_argument("--test_dev_dir", required=True)
    parser.add_argument("--image_size", type=int)
    parser.add_argument("--c", type=float, nargs="+", default=[0.003])
    parser.add_argument("--with_model", help="A model folder to average the probe with.")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.5], help="The probe's share of the average.")
    parser.add_argument("--min_sensitivity", type=float, default=0.95)
    parser.add_argument("--split_seed", type=int, default=7)
    args = parser.parse_args()
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    torch.set_grad_enabled(False)

    train_set, validation_set = load_splits(None, args.train_dir, None, 0.15, args.split_seed, None)
    test_set = load_evaluation_set(data_dir=args.test_dev_dir)
    classifier = build_classifier(args.checkpoint, image_size=args.image_size)
    features = {name: pooled_features(classifier, cached_films(split, classifier.data_config)) for name, split in (("train", train_set), ("validation", validation_set), ("test_dev", test_set))}
    others = {name: model_logits(args.with_model, split) for name, split in (("validation", validation_set), ("test_dev", test_set))} if args.with_model else None
    size = classifier.data_config["input_size"][-1]
    print("| checkpoint | px | C | probe share | test_dev accuracy | test_dev ROC-AUC | sensitivity | specificity | ECE | val ROC-AUC |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for c in args.c:
        w, b = fit_linear_head(*features["train"], c)
        probe = {name: features[name][0] @ w + b for name in ("validation", "test_dev")}
        shares = [1.0] + (args.weights if others else [])
        for share in shares:
            logit = {name: share * probe[name] + (1 - share) * others[name] if share < 1 else probe[name] for name in probe}
            found, validation_auc = decide(logit["validation"], features["validation"][1], logit["test_dev"], features["test_dev"][1], args.min_sensitivity)
            print(f"| {Path(args.checkpoint).name} | {size} | {c:g} | {share:g} | {found['accuracy']:.3f} | {found['roc_auc']:.3f} | {found['sensitivity']:.3f} | {found['specificity']:.3f} | {found['ece']:.3f} | {validation_auc:.3f} |")


if __name__ == "__main__":
    main()
