"""Adapt a model folder to a site's labelled films: the linear head of its frozen-feature member (a linear probe) refit
on the training films' features plus the site's, the members' votes and the calibration refit on the site's films,
then the threshold; every other weight byte for byte. The site's figures before and after are cross-fitted.

    pneumo-hf adapt --model pneumo_hf/default_model --data_dir our_films/ --output_dir runs/ours \
        --train_dir ../shared/data/chest_xray_224/train

The training features are recomputed from `--train_dir` (or `--dataset_name`) and cached beside the film cache: they
do not travel with the folder (docs/models.md, "Adapting to a site").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from . import metrics
from .calibration import films_sha256
from .card import readable_split, write_model_card
from .data import DataError, load_evaluation_set, patient_halves
from .domain import POOLED, DomainCheck, pooled_embedding, with_site_films
from .errors import ArgumentError
from .evaluation import split_loader
from .folder import ADAPTATION, CONFIG, SUMMARY, WEIGHTS, ModelFolder
from .linear_probe import fit_linear_head
from .models import ModelError, PneumoniaClassifier, resolve_model_folder

logger = logging.getLogger(__name__)

__all__ = ["MIN_FILMS_PER_LABEL", "MIN_PATIENTS", "SITE_WEIGHTS", "adapt_folder", "Margins"]

SITE_WEIGHTS = (1.0, 3.0, 10.0, 30.0)  # tried by the cross-fit unless --site_weight names one
MIN_FILMS_PER_LABEL = 10  # each half of a patient-grouped cross-fit then holds about 5 of each label
MIN_PATIENTS = 20
FIGURES = ("accuracy", "roc_auc", "sensitivity", "specificity", "ece", "ece_pneumonia")
SILENT = 1e6  # a member that loses its vote keeps its weights; its logits are divided by this


@dataclass
class Margins:
    """What adaptation fits on, per film: the probe member's pooled features, the other members' temperature-scaled
    logit differences (n, members - 1), the stored model's own logit difference, the label and the patient."""

    features: np.ndarray
    others: np.ndarray
    stored: np.ndarray
    labels: np.ndarray
    patients: np.ndarray


def probe_of(classifier: PneumoniaClassifier) -> tuple[nn.Module, str, list[nn.Module], list[dict[str, Any]]]:
    """The frozen-feature member (the model itself, or an ensemble's first member), the state-dict prefix of its head,
    the other members and their specs."""
    family, backbone = classifier.adapter, classifier.backbone
    probe, prefix, others, specs = (family.members[0], "members.0.", list(backbone.members[1:]), backbone.specs) if family.members else (family, "", [], [])
    head = probe.head()
    if not isinstance(head, nn.Linear) or head.out_features != 2 or probe.embedding_model() is None:
        raise ModelError(f"{classifier.architecture} has no linear-probe member (a timm backbone with a Linear head) whose head adaptation could refit.")
    name = next(name for name, module in probe.backbone.named_modules() if module is head)
    return probe.backbone, f"{prefix}{name}.", others, specs


@torch.no_grad()
def margins(classifier: PneumoniaClassifier, films, patients: np.ndarray) -> Margins:
    """`Margins` of every readable film of `films` (a datasets.Dataset), in one pass through each member; the stored
    model's margin is derived from them as `Ensemble.forward` averages them."""
    probe, _, others, specs = probe_of(classifier)
    classifier.eval()
    features, rest, labels = [], [], []
    for batch in split_loader(classifier, films):
        inputs = classifier.backbone.member_inputs(batch["pixel_values"]) if others else [batch["pixel_values"]]
        features.append(pooled_embedding(probe, inputs[0]).numpy())
        rest.append(np.stack([_difference(member(x)) / spec["temperature"] for member, spec, x in zip(others, specs[1:], inputs[1:], strict=True)], axis=1) if others else np.zeros((len(inputs[0]), 0)))
        labels.append(batch["labels"].numpy())
    features, rest = np.concatenate(features), np.concatenate(rest)
    w, b = head_weights(classifier)
    probe_margin = (features @ w + b) / (specs[0]["temperature"] if others else 1.0)
    stored = (probe_margin + rest.sum(axis=1)) / (len(others) + 1)
    return Margins(features, rest, stored, np.concatenate(labels), patients)


def _difference(logits: torch.Tensor) -> np.ndarray:
    return (logits[:, 1] - logits[:, 0]).float().numpy().astype(np.float64)


@dataclass
class Fit:
    """One adaptation: the probe's head on raw features (its PNEUMONIA margin = features @ w + b, the new head and the
    stored one combined by their votes), the other members' votes, Platt's intercept and the threshold; `stacking`
    holds the votes as fitted: [new head, stored head, other members...]."""

    w: np.ndarray
    b: float
    intercept: float
    threshold: float
    stacking: np.ndarray

    @property
    def votes(self) -> np.ndarray:
        """The other members' votes."""
        return self.stacking[2:]

    def margin(self, site: Margins) -> np.ndarray:
        return site.features @ self.w + self.b + site.others @ self.votes + self.intercept


def fit_head(train: tuple[np.ndarray, np.ndarray], site: Margins, weight: float, c: float) -> tuple[np.ndarray, float]:
    """The probe's head on train + site features, each site film weighted `weight`."""
    features = np.concatenate([train[0], site.features])
    labels = np.concatenate([train[1], site.labels])
    return fit_linear_head(features, labels, c, sample_weight=np.concatenate([np.ones(len(train[1])), np.full(len(site.labels), weight)]))


def fit(train: tuple[np.ndarray, np.ndarray], site: Margins, stored_head: tuple[np.ndarray, float], weight: float, c: float, min_sensitivity: float) -> Fit:
    """A new head on train + site features (each site film weighted `weight`), then a logistic regression of the
    site's labels on the margins of the new head, the stored head and the other members (stacking): its coefficients
    are the votes (one that comes out negative loses its vote, and the rest are refit) and its intercept Platt's; both
    heads read the same features, so their votes fold into one head. Then the threshold. The stacking and the
    threshold read the new head's margins out of fold (two patient-grouped halves of the site, each scored by a head
    fitted without it): a head scored on films it learnt from looks surer than it is, and would outvote the rest."""
    from sklearn.linear_model import LogisticRegression

    w_new, b_new = fit_head(train, site, weight, c)
    out_of_fold = np.zeros(len(site.labels))
    for inner, held in patient_halves(site.labels, site.patients, repeats=1):
        w_inner, b_inner = fit_head(train, _rows(site, inner), weight, c)
        out_of_fold[held] = site.features[held] @ w_inner + b_inner
    columns = np.column_stack([out_of_fold, site.features @ stored_head[0] + stored_head[1], site.others])
    voting = np.ones(columns.shape[1], dtype=bool)
    while True:
        regression = LogisticRegression(C=np.inf, max_iter=1000).fit(columns[:, voting], site.labels)
        if (regression.coef_[0] > 0).all() or voting.sum() == 1:
            break
        voting[np.flatnonzero(voting)[regression.coef_[0] <= 0]] = False
    stacking = np.zeros(columns.shape[1])
    stacking[voting] = np.maximum(regression.coef_[0], 0.0)
    intercept = float(regression.intercept_[0])
    w = stacking[0] * w_new + stacking[1] * stored_head[0]
    b = float(stacking[0] * b_new + stacking[1] * stored_head[1])
    threshold = metrics.choose_threshold(site.labels, _sigmoid(columns @ stacking + intercept), min_sensitivity)
    return Fit(w, b, intercept, threshold, stacking)


def _sigmoid(margin: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-margin))


def figures(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """The figures adaptation reports (metrics.site_figures: both ECEs)."""
    found = metrics.site_figures(labels, scores, threshold)
    return {key: found[key] for key in FIGURES}


def crossfit(train, site: Margins, stored_head: tuple[np.ndarray, float], weight: float, c: float, min_sensitivity: float, stored_threshold: float, stored_scores: np.ndarray, repeats: int) -> dict[str, Any]:
    """Mean figures on held-out patient-grouped halves (`repeats` halvings, both ways): the stored model, and the
    adaptation fitted on the other half alone; the held-out films are never in a fit. Also, per film, its held-out
    P(PNEUMONIA) averaged over the repeats and the share of repeats that decided it right (for `paired_bootstrap`)."""
    found: dict[str, list[dict]] = {"stored": [], "adapted": []}
    scores, right = np.zeros(len(site.labels)), np.zeros(len(site.labels))
    for fitted, held in patient_halves(site.labels, site.patients, repeats, seed=1000):
        adaptation = fit(train, _rows(site, fitted), stored_head, weight, c, min_sensitivity)
        held_scores = _sigmoid(adaptation.margin(_rows(site, held)))
        scores[held] += held_scores / repeats
        right[held] += ((held_scores >= adaptation.threshold) == site.labels[held]) / repeats
        found["stored"].append(figures(site.labels[held], stored_scores[held], stored_threshold))
        found["adapted"].append(figures(site.labels[held], held_scores, adaptation.threshold))
    means = {name: {**{key: float(np.mean([row[key] for row in rows])) for key in FIGURES}, "halves": len(rows)} for name, rows in found.items()}
    stored_right = ((stored_scores >= stored_threshold) == site.labels).astype(float)
    means["adapted"]["against_stored"] = metrics.paired_bootstrap(site.labels, site.patients, (scores, right), (stored_scores, stored_right))
    return means


def _rows(site: Margins, index: np.ndarray) -> Margins:
    return Margins(site.features[index], site.others[index], site.stored[index], site.labels[index], site.patients[index])


def check_site(labels: np.ndarray, patients: np.ndarray, data_dir: str) -> None:
    """Refuse a site whose films are too few to measure an adaptation on: a cross-fit halves them by patient."""
    counts = [int((labels == label).sum()) for label in (0, 1)]
    if min(counts) < MIN_FILMS_PER_LABEL or len(set(patients)) < MIN_PATIENTS:
        raise DataError(
            f"{data_dir} holds {counts[0]} NORMAL and {counts[1]} PNEUMONIA films of {len(set(patients))} patients; adaptation needs at least "
            f"{MIN_FILMS_PER_LABEL} of each label and {MIN_PATIENTS} patients, so that each patient-grouped half it is measured on holds both labels."
        )


def adapt_folder(model: str, data_dir: str, output_dir: str, train_dir: Optional[str] = None, dataset_name: Optional[str] = None, site_weight: Optional[float] = None, min_sensitivity: float = 0.95, repeats: int = 20) -> dict[str, Any]:
    """Adapt `model` to the labelled films of `data_dir` and write `output_dir`: the folder with the probe's head,
    the members' votes, Platt's calibration and the threshold refit, adaptation.json (before and after, cross-fitted;
    the films by name, count and sha256) and the card. Returns adaptation.json's content."""
    if not train_dir and not dataset_name:
        raise ArgumentError("Name the training films the head is refit on: --train_dir FOLDER or --dataset_name NAME.")
    if site_weight is not None and site_weight <= 0:
        raise ArgumentError(f"--site_weight {site_weight}: give a positive weight, e.g. 3.")
    output = ModelFolder(output_dir)
    if output.path.exists() and any(output.path.iterdir()):
        raise ArgumentError(f"--output_dir {output.path} is not empty; choose a new folder, the adapted copy goes there whole.")
    folder = ModelFolder(resolve_model_folder(model))
    classifier = PneumoniaClassifier.from_pretrained(folder.path).float().eval()
    if classifier.test_time_views:
        raise ModelError(f"{model} predicts with test-time views {classifier.test_time_views}; adaptation refits single-view heads only.")
    _, head_prefix, others, _ = probe_of(classifier)
    c = probe_c(folder)
    films = load_evaluation_set(data_dir=data_dir)
    patients = np.asarray(films["patient"])
    check_site(np.asarray(films["label"]), patients, data_dir)
    site = margins(classifier, films, patients)
    train_films = load_evaluation_set(dataset_name=dataset_name, split="train", data_dir=train_dir)
    logger.info("Pooled features of %d training films (once; then from the cache).", len(train_films))
    train = cached_features(classifier, train_films)
    stored_scores = metrics.probabilities(np.column_stack([np.zeros_like(site.stored), site.stored]), classifier.temperature, classifier.intercept)[:, 1]
    candidates = (site_weight,) if site_weight else SITE_WEIGHTS
    stored_head = head_weights(classifier)
    measured = {weight: crossfit(train, site, stored_head, weight, c, min_sensitivity, classifier.threshold, stored_scores, repeats) for weight in candidates}
    weight = max(candidates, key=lambda w: (measured[w]["adapted"]["roc_auc"], measured[w]["adapted"]["accuracy"]))
    final = fit(train, site, stored_head, weight, c, min_sensitivity)
    report = {
        "data": readable_split(str(data_dir)),
        "films": int(len(site.labels)),
        "patients": int(len(set(patients))),
        "films_sha256": films_sha256(films),
        "training_films": int(len(train[1])),
        "training_data": readable_split(str(train_dir or dataset_name)),
        "site_weight": weight,
        "site_weights_tried": {str(w): measured[w]["adapted"] for w in candidates},
        "linear_probe_c": c,
        "min_sensitivity": min_sensitivity,
        "votes": {"new head": float(final.stacking[0]), "stored head": float(final.stacking[1]), **{f"member {i + 1}": float(v) for i, v in enumerate(final.votes)}},
        "intercept": final.intercept,
        "threshold": final.threshold,
        "before": figures(site.labels, stored_scores, classifier.threshold),
        "crossfit": measured[weight],
    }
    write_adapted(folder, output, head_prefix, final, len(others) + 1)
    report["domain_check"] = adapt_domain_check(folder, output, classifier, train[0], site)
    output.write(ADAPTATION, report)
    if output.has(SUMMARY):
        write_model_card(output.path)
    return report


def adapt_domain_check(folder: ModelFolder, output: ModelFolder, classifier: PneumoniaClassifier, train: np.ndarray, site: Margins) -> dict[str, Any]:
    """The stored pooled domain check with the site's films in its reference (`domain.with_site_films`), written into
    `output`; what it flags of the site's films before and after. A folder without one, or with another kind, keeps
    what it has, and the record says so."""
    check = DomainCheck.load(folder.path, classifier)
    if check is None or check.kind != POOLED:
        return {"refit": False, "why": "the folder has no pooled-embedding domain check" if check is None else f"its domain check reads {check.kind}, not the pooled embedding"}
    check, found = with_site_films(check, train, site.features, patient_halves(site.labels, site.patients, repeats=5, seed=2000))
    check.save(output.path)
    return {"refit": True, **found}


def head_weights(classifier: PneumoniaClassifier) -> tuple[np.ndarray, float]:
    """The stored probe head as (w, b) on raw features: its PNEUMONIA logit minus its NORMAL logit."""
    head = probe_of(classifier)[0].get_classifier()
    weight, bias = head.weight.detach().double().numpy(), head.bias.detach().double().numpy()
    return weight[1] - weight[0], float(bias[1] - bias[0])


def probe_c(folder: ModelFolder) -> float:
    """The probe's L2 penalty as its training summary records it (the first member's in an ensemble)."""
    summary = folder.summary()
    c = summary and (summary.linear_probe_c or next((member.get("linear_probe_c") for member in summary.members or [] if member.get("linear_probe_c")), None))
    if not c:
        raise ModelError(f"{folder.path}'s training_summary.json records no linear_probe_c: its first member is not a linear probe.")
    return float(c)


def cached_features(classifier: PneumoniaClassifier, films) -> tuple[np.ndarray, np.ndarray]:
    """The probe member's pooled features and labels of `films`, kept beside the film cache for these weights."""
    import hashlib

    from .film_cache import default_cache_dir

    probe = probe_of(classifier)[0]
    digest = hashlib.sha256(films_sha256(films).encode())
    for name, tensor in sorted(probe.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    path = default_cache_dir() / f"adapt-features-{digest.hexdigest()[:20]}.npz"
    if path.is_file():
        stored = np.load(path)
        return stored["features"], stored["labels"]
    found = probe_features(classifier, films)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.stem}.tmp.npz")
    np.savez(temporary, features=found[0], labels=found[1])
    temporary.replace(path)
    return found


def probe_features(classifier: PneumoniaClassifier, films) -> tuple[np.ndarray, np.ndarray]:
    """The probe member's pooled features (`domain.pooled_embedding`, fed as the ensemble feeds it) and the labels."""
    probe, _, others, _ = probe_of(classifier)
    features, labels = [], []
    for batch in split_loader(classifier, films):
        inputs = classifier.backbone.member_inputs(batch["pixel_values"]) if others else [batch["pixel_values"]]
        features.append(pooled_embedding(probe, inputs[0]).numpy())
        labels.append(batch["labels"].numpy())
    return np.concatenate(features), np.concatenate(labels)


def write_adapted(folder: ModelFolder, output: ModelFolder, head_prefix: str, adaptation: Fit, members: int) -> None:
    """A copy of `folder` whose head tensors are the refit probe's (in their stored dtype; every other tensor byte for
    byte) and whose config carries the votes (as the members' temperatures), Platt's intercept and the threshold."""
    folder.copy_to(output)
    tensors = load_file(str(folder.file(WEIGHTS)))
    weight, bias = tensors[f"{head_prefix}weight"], tensors[f"{head_prefix}bias"]
    half = torch.as_tensor(adaptation.w, dtype=torch.float64) / 2
    tensors[f"{head_prefix}weight"] = torch.stack([-half, half]).to(weight.dtype)
    tensors[f"{head_prefix}bias"] = torch.tensor([-adaptation.b / 2, adaptation.b / 2], dtype=torch.float64).to(bias.dtype)
    save_file(tensors, str(output.file(WEIGHTS)), metadata={"format": "pt"})
    config = output.read(CONFIG)
    # the ensemble's logit difference is the mean over members of margin / temperature: a vote v is temperature 1 / (M v)
    # (the probe's votes are in its head, so its vote is 1)
    if members > 1:
        specs = config["model_args"]["members"]
        specs[0]["temperature"] = 1.0 / members
        for spec, vote in zip(specs[1:], adaptation.votes, strict=True):
            spec["temperature"] = spec["temperature"] / (members * vote) if vote > 0 else SILENT
        output.write(CONFIG, config)
    output.set_calibration(1.0, adaptation.threshold, adaptation.intercept)
