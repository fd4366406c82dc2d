"""Candidates for issue 39 beyond `pneumo-hf adapt`'s own: more frozen-feature heads stacked beside the shipped members
(Lite1/Lite2 pooled features, each head fitted on train + the site's films), Lite0's head fitted on augmented
training views too, and a threshold chosen for accuracy instead of sensitivity. Each row cross-fitted exactly as
`pneumo_hf.adaptation.crossfit` is (patient-grouped halves of the site, both ways; the stacking reads out-of-fold
margins) with a patient-level paired bootstrap against the stored model:

    pneumo-hf checkpoint tf_efficientnet_lite1 --output_dir checkpoints/tf_efficientnet_lite1     # lite2 alike
    python train/experiments/extra_heads.py --model pneumo_hf/default_model \
        --data_dir ../shared/data/chest_xray_224/test_dev --train_dir ../shared/data/chest_xray_224/train \
        --checkpoints checkpoints/tf_efficientnet_lite1 checkpoints/tf_efficientnet_lite2 --augmented_views 2 --repeats 10

Features are computed once and cached (pneumo_hf.adaptation.cached_features; the augmented views beside them).
"""

import argparse
import hashlib
from pathlib import Path

import numpy as np
import torch

from pneumo_hf import adaptation, metrics
from pneumo_hf.augmentation import BatchAugment
from pneumo_hf.data import load_evaluation_set, patient_halves
from pneumo_hf.domain import pooled_embedding
from pneumo_hf.evaluation import split_loader
from pneumo_hf.film_cache import default_cache_dir
from pneumo_hf.folder import ModelFolder
from pneumo_hf.models import PneumoniaClassifier, from_checkpoint, resolve_model_folder
from pneumo_hf.transforms import denormalise


def augmented_features(classifier: PneumoniaClassifier, films, views: int) -> tuple[np.ndarray, np.ndarray]:
    """The probe member's pooled features of `views` augmented copies of every film (the training augmentation at
    strength 1, seeded), cached beside the film cache."""
    probe, _, others, _ = adaptation.probe_of(classifier)
    key = hashlib.sha256(f"{adaptation.films_sha256(films)}:{views}:{adaptation.head_weights(classifier)[1]}".encode()).hexdigest()[:20]
    path = default_cache_dir() / f"augmented-features-{key}.npz"
    if path.is_file():
        stored = np.load(path)
        return stored["features"], stored["labels"]
    data_config = classifier.backbone.specs[0] if others else classifier.data_config  # its mean and std
    augment = BatchAugment(data_config, aug_strength=1.0)
    torch.manual_seed(0)
    features, labels = [], []
    for _ in range(views):
        for batch in split_loader(classifier, films):
            inputs = classifier.backbone.member_inputs(batch["pixel_values"]) if others else [batch["pixel_values"]]
            film = (denormalise(inputs[0], data_config["mean"], data_config["std"])[:, :1] * 255.0).clamp(0, 255)  # the grey film BatchAugment draws on
            features.append(pooled_embedding(probe, augment(film)).numpy())
            labels.append(batch["labels"].numpy())
    found = np.concatenate(features), np.concatenate(labels)
    np.savez(path, features=found[0], labels=found[1])
    return found


def crossfit(blocks, site: adaptation.Margins, stored_head, weight: float, c: float, rule: tuple[str, float], stored: tuple[np.ndarray, float], repeats: int) -> dict:
    """Held-out figures of a stacking of one new head per feature block (each on its training features + the site's
    fitted half, weighted `weight`), the stored probe head and the other members; `rule` places the threshold."""
    from sklearn.linear_model import LogisticRegression

    def heads(index):
        return [adaptation.fit_head(train, _with(site, index, features), weight, c) for train, features in blocks]

    def columns(index, new_margins):
        return np.column_stack([*new_margins, site.features[index] @ stored_head[0] + stored_head[1], site.others[index]])

    labels, rows = site.labels, []
    scores, right = np.zeros(len(labels)), np.zeros(len(labels))
    for fitted, held in patient_halves(labels, site.patients, repeats, seed=1000):
        out_of_fold = [np.zeros(len(fitted)) for _ in blocks]
        for inner, inner_held in patient_halves(labels[fitted], site.patients[fitted], repeats=1):
            for k, (w, b) in enumerate(heads(fitted[inner])):
                out_of_fold[k][inner_held] = blocks[k][1][fitted[inner_held]] @ w + b
        x = columns(fitted, out_of_fold)
        voting = np.ones(x.shape[1], dtype=bool)
        while True:
            regression = LogisticRegression(C=np.inf, max_iter=1000).fit(x[:, voting], labels[fitted])
            if (regression.coef_[0] > 0).all() or voting.sum() == 1:
                break
            voting[np.flatnonzero(voting)[regression.coef_[0] <= 0]] = False
        stacking = np.zeros(x.shape[1])
        stacking[voting] = regression.coef_[0]
        fitted_scores = adaptation._sigmoid(x @ stacking + regression.intercept_[0])
        threshold = threshold_for(labels[fitted], fitted_scores, rule)
        full = heads(fitted)
        held_scores = adaptation._sigmoid(columns(held, [blocks[k][1][held] @ w + b for k, (w, b) in enumerate(full)]) @ stacking + regression.intercept_[0])
        scores[held] += held_scores / repeats
        right[held] += ((held_scores >= threshold) == labels[held]) / repeats
        rows.append(adaptation.figures(labels[held], held_scores, threshold))
    found = {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}
    stored_right = ((stored[0] >= stored[1]) == labels).astype(float)
    return {**found, "against_stored": metrics.paired_bootstrap(labels, site.patients, (scores, right), (stored[0], stored_right))}


def _with(site: adaptation.Margins, index: np.ndarray, features: np.ndarray) -> adaptation.Margins:
    return adaptation.Margins(features[index], site.others[index], site.stored[index], site.labels[index], site.patients[index])


def threshold_for(labels: np.ndarray, scores: np.ndarray, rule: tuple[str, float]) -> float:
    """`("sensitivity", s)`: the most specific threshold keeping sensitivity ≥ s; `("accuracy", 0)`: the most accurate."""
    if rule[0] == "sensitivity":
        return metrics.choose_threshold(labels, scores, rule[1])
    candidates = np.unique(scores)
    accuracy = [((scores >= t) == labels).mean() for t in candidates]
    return float(candidates[int(np.argmax(accuracy))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--train_dir", required=True)
    parser.add_argument("--checkpoints", nargs="*", default=[])
    parser.add_argument("--augmented_views", type=int, default=0)
    parser.add_argument("--site_weight", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    folder = ModelFolder(resolve_model_folder(args.model))
    classifier = PneumoniaClassifier.from_pretrained(folder.path).float().eval()
    films = load_evaluation_set(data_dir=args.data_dir)
    train_films = load_evaluation_set(split="train", data_dir=args.train_dir)
    site = adaptation.margins(classifier, films, np.asarray(films["patient"]))
    train = adaptation.cached_features(classifier, train_films)
    c, stored_head = adaptation.probe_c(folder), adaptation.head_weights(classifier)
    stored_scores = metrics.probabilities(np.column_stack([np.zeros_like(site.stored), site.stored]), classifier.temperature, classifier.intercept)[:, 1]
    stored = (stored_scores, classifier.threshold)
    lite0 = (train, site.features)
    extra = {}
    for path in args.checkpoints:
        other = from_checkpoint(Path(path)).float().eval()
        extra[Path(path).name] = (adaptation.cached_features(other, train_films), adaptation.cached_features(other, films)[0])
    if args.augmented_views:
        views = augmented_features(classifier, train_films, args.augmented_views)
        extra[f"lite0 + {args.augmented_views} augmented views"] = None
    print(f"{'':<58}{'accuracy':>9}{'ROC-AUC':>9}{'sens':>7}{'spec':>7}{'ECE':>7}{'ECE P':>7}   ΔROC-AUC [95 %]         Δaccuracy [95 %]")

    def show(name: str, blocks, rule=("sensitivity", 0.95)) -> None:
        found = crossfit(blocks, site, stored_head, args.site_weight, c, rule, stored, args.repeats)
        auc, acc = found["against_stored"]["delta_roc_auc"], found["against_stored"]["delta_accuracy"]
        print(f"{name:<58}{found['accuracy']:>9.3f}{found['roc_auc']:>9.3f}{found['sensitivity']:>7.3f}{found['specificity']:>7.3f}{found['ece']:>7.3f}{found['ece_pneumonia']:>7.3f}"
              f"   {auc[1]:+.4f} [{auc[0]:+.4f}, {auc[2]:+.4f}]  {acc[1]:+.4f} [{acc[0]:+.4f}, {acc[2]:+.4f}]", flush=True)

    show(f"lite0 head (adapt's own), weight {args.site_weight:g}", [lite0])
    show("lite0 head, threshold for accuracy", [lite0], ("accuracy", 0.0))
    for name, block in extra.items():
        if block is None:
            both = (np.concatenate([train[0], views[0]]), np.concatenate([train[1], views[1]]))
            show(f"{name}", [(both, site.features)])
        else:
            show(f"lite0 + {name} heads", [lite0, block])
    named = [block for block in extra.values() if block is not None]
    if len(named) > 1:
        show("lite0 + " + " + ".join(name for name, block in extra.items() if block is not None) + " heads", [lite0, *named])
        show("the same, threshold for accuracy", [lite0, *named], ("accuracy", 0.0))


if __name__ == "__main__":
    main()
