"""`pneumo-hf adapt`'s choices on a site, each cross-fitted with a patient-level paired bootstrap against the stored
model (docs/models.md, "Adapting to a site"):

    python train/experiments/adapt_sweep.py --model pneumo_hf/default_model \
        --data_dir ../shared/data/chest_xray_224/test_dev --train_dir ../shared/data/chest_xray_224/train \
        --site_weight 1 3 30 --min_sensitivity 0.95 0.97 --repeats 10

The members' margins are computed once and the training features come from the cache `pneumo-hf adapt` fills, so each
row costs its fits only. "votes + Platt only" refits the stacking, intercept and threshold without a new head.
"""

import argparse

import numpy as np

from pneumo_hf import adaptation, metrics
from pneumo_hf.data import load_evaluation_set, patient_halves
from pneumo_hf.folder import ModelFolder
from pneumo_hf.models import PneumoniaClassifier, resolve_model_folder


def votes_only(site: adaptation.Margins, stored_head, min_sensitivity: float, repeats: int, stored_scores, stored_threshold) -> dict:
    """The stored heads' margins stacked with Platt's intercept and a new threshold, fitted on one half, scored on the other."""
    from sklearn.linear_model import LogisticRegression

    columns = np.column_stack([site.features @ stored_head[0] + stored_head[1], site.others])
    rows, scores, right = [], np.zeros(len(site.labels)), np.zeros(len(site.labels))
    for fitted, held in patient_halves(site.labels, site.patients, repeats, seed=1000):
        regression = LogisticRegression(C=np.inf, max_iter=1000).fit(columns[fitted], site.labels[fitted])
        threshold = metrics.choose_threshold(site.labels[fitted], regression.predict_proba(columns[fitted])[:, 1], min_sensitivity)
        held_scores = regression.predict_proba(columns[held])[:, 1]
        scores[held] += held_scores / repeats
        right[held] += ((held_scores >= threshold) == site.labels[held]) / repeats
        rows.append(adaptation.figures(site.labels[held], held_scores, threshold))
    found = {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}
    stored_right = ((stored_scores >= stored_threshold) == site.labels).astype(float)
    return {**found, "against_stored": metrics.paired_bootstrap(site.labels, site.patients, (scores, right), (stored_scores, stored_right))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--train_dir", required=True)
    parser.add_argument("--site_weight", type=float, nargs="+", default=[1.0, 3.0, 30.0])
    parser.add_argument("--min_sensitivity", type=float, nargs="+", default=[0.95])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    folder = ModelFolder(resolve_model_folder(args.model))
    classifier = PneumoniaClassifier.from_pretrained(folder.path).float().eval()
    films = load_evaluation_set(data_dir=args.data_dir)
    patients = np.asarray(films["patient"])
    site = adaptation.margins(classifier, films, patients)
    train = adaptation.cached_features(classifier, load_evaluation_set(split="train", data_dir=args.train_dir))
    stored_head, c = adaptation.head_weights(classifier), adaptation.probe_c(folder)
    stored_scores = metrics.probabilities(np.column_stack([np.zeros_like(site.stored), site.stored]), classifier.temperature, classifier.intercept)[:, 1]
    print(f"{'':<40}{'accuracy':>9}{'ROC-AUC':>9}{'sens':>7}{'spec':>7}{'ECE':>7}{'ECE P':>7}   ΔROC-AUC [95 %]         Δaccuracy [95 %]")

    def show(name: str, found: dict) -> None:
        auc, acc = found["against_stored"]["delta_roc_auc"], found["against_stored"]["delta_accuracy"]
        print(f"{name:<40}{found['accuracy']:>9.3f}{found['roc_auc']:>9.3f}{found['sensitivity']:>7.3f}{found['specificity']:>7.3f}{found['ece']:>7.3f}{found['ece_pneumonia']:>7.3f}"
              f"   {auc[1]:+.4f} [{auc[0]:+.4f}, {auc[2]:+.4f}]  {acc[1]:+.4f} [{acc[0]:+.4f}, {acc[2]:+.4f}]")

    for min_sensitivity in args.min_sensitivity:
        measured = adaptation.crossfit(train, site, stored_head, args.site_weight[0], c, min_sensitivity, classifier.threshold, stored_scores, args.repeats)
        show("stored model, cross-fitted halves", {**measured["stored"], "against_stored": {"delta_roc_auc": [0, 0, 0], "delta_accuracy": [0, 0, 0]}})
        show(f"votes + Platt only, sens ≥ {min_sensitivity}", votes_only(site, stored_head, min_sensitivity, args.repeats, stored_scores, classifier.threshold))
        for weight in args.site_weight:
            if weight != args.site_weight[0]:
                measured = adaptation.crossfit(train, site, stored_head, weight, c, min_sensitivity, classifier.threshold, stored_scores, args.repeats)
            show(f"adapted, weight {weight:g}, sens ≥ {min_sensitivity}", measured["adapted"])


if __name__ == "__main__":
    main()
