"""The linear probe: a pretrained backbone's pooled features computed once (cached beside the film cache), a
class-balanced logistic regression fitted on them to convergence, and its weights written into the model's own head.

    python train/train.py --model_name_or_path checkpoints/tf_efficientnet_lite0 --linear_probe --num_train_epochs 0 ...

With `--num_train_epochs 0` the run is the probe alone (minutes); with more epochs it is LP-FT (Kumar et al., ICLR
2022): the head starts converged and the backbone is fine-tuned gently from there, so a fresh head cannot distort the
pretrained features. The head stays timm's Linear layer, so the folder, the heatmap and the ensembles do not change.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from .models import ModelError, PneumoniaClassifier, head_of

logger = logging.getLogger(__name__)

__all__ = ["fit_linear_head", "pooled_features", "set_linear_head"]


@torch.no_grad()
def pooled_features(classifier: PneumoniaClassifier, films: torch.utils.data.Dataset, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """The pooled features (the head's input) and labels of every readable film of `films` (a `CachedFilms` of
    normalised inputs), computed once for these films and these backbone weights and kept beside the film cache."""
    from .data import collate

    if classifier.adapter.embedding_model() is not classifier.backbone:
        raise ModelError(f"--linear_probe needs a timm backbone with a pooling head; {classifier.architecture} is a {classifier.family} model.")
    backbone = classifier.backbone
    head = backbone.pretrained_cfg.get("classifier") or "classifier"
    weights = hashlib.sha256()  # of the weights the features depend on: all but the head
    for name, tensor in backbone.state_dict().items():
        if name.startswith(f"{head}."):
            continue
        weights.update(name.encode())
        weights.update(tensor.detach().cpu().numpy().tobytes())
    key = hashlib.sha256(f"{Path(films.pixels.filename).name}:{weights.hexdigest()}".encode()).hexdigest()[:20]
    path = Path(films.pixels.filename).with_name(f"features-{key}.npz")
    if path.is_file():
        stored = np.load(path)
        logger.info("Pooled features of %d films reused from %s.", len(stored["labels"]), path)
        return stored["features"], stored["labels"]
    was_training = backbone.training
    backbone.eval()
    features, labels = [], []
    for batch in torch.utils.data.DataLoader(films, batch_size=batch_size, collate_fn=collate):
        if len(batch["labels"]):
            features.append(backbone.forward_head(backbone.forward_features(batch["pixel_values"]), pre_logits=True).float().numpy())
            labels.append(batch["labels"].numpy())
    backbone.train(was_training)
    features, labels = np.concatenate(features), np.concatenate(labels)
    temporary = path.with_name(f"{path.stem}.tmp-{os.getpid()}.npz")  # renamed into place: two runs may share the cache
    np.savez(temporary, features=features, labels=labels)
    temporary.replace(path)
    logger.info("Pooled features of %d films computed once and kept in %s.", len(labels), path)
    return features, labels


def fit_linear_head(features: np.ndarray, labels: np.ndarray, c: float, seed: int = 0, sample_weight: Optional[np.ndarray] = None) -> tuple[np.ndarray, float]:
    """A class-balanced logistic regression on standardised features (scikit-learn, L2 penalty `c`, to convergence,
    each film weighted by `sample_weight` if given), folded back to the raw features: the PNEUMONIA logit is
    `features @ w + b`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(features)
    regression = LogisticRegression(C=c, class_weight="balanced", max_iter=5000, random_state=seed).fit(scaler.transform(features), labels, sample_weight=sample_weight)
    w = regression.coef_[0] / scaler.scale_
    b = float(regression.intercept_[0] - (w * scaler.mean_).sum())
    logger.info("Linear probe: logistic regression (C %g) on %d films × %d features, %d iterations, train accuracy %.4f.", c, *features.shape, int(regression.n_iter_[0]), regression.score(scaler.transform(features), labels))
    return w, b


@torch.no_grad()
def set_linear_head(classifier: PneumoniaClassifier, w: np.ndarray, b: float) -> None:
    """Write the probe into the two-class head: logits (−s/2, s/2) with s = features @ w + b, so softmax gives the
    regression's probability."""
    head = head_of(classifier)
    if not isinstance(head, nn.Linear) or head.in_features != len(w) or head.out_features != 2:
        raise ModelError(f"--linear_probe needs a Linear head of {len(w)} inputs and 2 outputs; {classifier.architecture} has {head}.")
    weight = torch.as_tensor(w, dtype=head.weight.dtype) / 2
    head.weight.copy_(torch.stack([-weight, weight]))
    head.bias.copy_(torch.tensor([-b / 2, b / 2], dtype=head.bias.dtype))
