"""The Hub: is it reachable, the model card, and the push of a model folder.

    from pneumo_hf.hub import push_folder
    push_folder("runs/b0", "ORG/pneumonia-efficientnet_b0")   # token from HF_TOKEN or `hf auth login`
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

from huggingface_hub import ModelCardData, create_repo, upload_folder
from huggingface_hub.constants import ENDPOINT, HF_HUB_OFFLINE

from .labels import LABELS

logger = logging.getLogger(__name__)

__all__ = ["HubError", "hub_reachable", "write_model_card", "push_folder"]

DATASET_ID = "hf-vision/chest-xray-pneumonia"


class HubError(RuntimeError):
    """A Hub operation that failed; the message says what to do."""


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the Hub's host answers within `timeout` seconds (and HF_HUB_OFFLINE is not set).
    A quick check, so that offline runs fail at once with one message instead of retrying for a minute."""
    if HF_HUB_OFFLINE:
        return False
    host = urlparse(ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def write_model_card(folder: Path, summary: dict[str, Any], model_id: Optional[str] = None) -> None:
    """README.md with Hub metadata (`model-index` holds the validation metrics) and the honest story of the model."""
    metrics = summary["validation"]
    card_data = ModelCardData(
        license="cc-by-4.0",
        library_name="timm" if summary["family"] == "timm" else "transformers",
        pipeline_tag="image-classification",
        datasets=[DATASET_ID],
        tags=["medical-imaging", "chest-x-ray", "pneumonia", "pneumo-hf"],
        model_name=model_id or Path(folder).name,
        eval_results=_eval_results(metrics),
    )
    start = "from random initialisation (no pretrained weights)" if summary["trained_from_scratch"] else "from ImageNet-pretrained weights"
    rows = "\n".join(f"| {name} | {metrics[name]:.4f} |" for name in ("roc_auc", "accuracy", "recall", "specificity", "precision", "f1", "ece"))
    content = f"""---
{card_data.to_yaml()}
---

# {card_data.model_name}

A NORMAL / PNEUMONIA classifier for pediatric chest X-rays, made with
[pneumo-hf](https://github.com/pneumo-hf/pneumo-hf): `{summary['architecture']}` ({summary['family']}),
trained {start} on the train split of Kermany et al. 2018.

**Not a medical device. Not for clinical use.** It was trained on anterior-posterior chest films of
children aged 1 to 5 from one hospital (Guangzhou Women and Children's Medical Center); on adults,
other projections, other hospitals or other scanners it has not been measured and may fail.

## Validation figures

Measured on a patient-grouped validation split carved from the training data
({metrics['n']} images; no patient is on both sides). These are **validation** figures, not test
figures: on this data, test figures usually run several points lower.

| metric | value |
| --- | --- |
{rows}

Decision threshold {metrics['threshold']:.4f}: {summary['threshold_rule']}.
Calibration temperature {summary['temperature']:.3f} (fitted on the validation split; applied by `pneumo_hf`).
{_views_line(summary['test_time_views'])}
{_storage_line(summary['storage'])}
Confusion matrix `[[TN, FP], [FN, TP]]`: {metrics['confusion_matrix']}.

![ROC](roc_curve.png) ![Confusion matrix](confusion_matrix.png) ![Training curves](training_curves.png)

## Known failure modes

{_failure_modes(metrics['confusion_matrix'])}

## Use

```python
from pneumo_hf import load_predictor
predictor = load_predictor("{model_id or 'path/to/this/folder'}")
pred = predictor.predict("scan.dcm", heatmap=True)
print(pred.label, pred.probabilities)
```

{_plain_loading(summary['family'])}

## Training

Labels: `{list(LABELS)}`. Input {summary['input_size']}, mean {summary['mean']}, std {summary['std']}.
Loss: {summary['loss']}, class weights {summary['class_weights']}. {summary['epochs_run']} epochs,
{summary['train_images']} training images, train time {summary['train_seconds']:.0f} s.

```
{summary['command']}
```

## Data and credit

Kermany D, Zhang K, Goldbaum M et al. Identifying Medical Diagnoses and Treatable Diseases by
Image-Based Deep Learning. Cell 172(5):1122–1131 (2018). Data: Mendeley Data v2,
doi:10.17632/rscbjbr9sj.2, CC BY 4.0.
"""
    Path(folder, "README.md").write_text(content)


def _failure_modes(confusion_matrix: list) -> str:
    (tn, fp), (fn, tp) = confusion_matrix
    return f"""- On validation, at the stored threshold: {fn} of {fn + tp} PNEUMONIA films missed, {fp} of {fp + tn} NORMAL films flagged.
- Not measured at all: adults, lateral or posterior-anterior films, other hospitals and scanners, the official test split.
- The Grad-CAM heatmap is coarse (the last feature map) and can fall outside the lungs: read it as where the
  model looked, not as an outline of a lesion."""


def _views_line(views: list) -> str:
    if not views:
        return "No test-time augmentation."
    return f"Test-time augmentation: `pneumo_hf` averages the logits of the image and its views {views}; figures, temperature and threshold include it."


def _storage_line(storage: dict[str, Any]) -> str:
    change = storage["fp16_max_change"]
    if storage["dtype"] == "float16":
        return f"Weights stored in fp16: on validation no PNEUMONIA probability differs from fp32 by more than {change:.5f}; the figures above are the fp16 weights'."
    if change is not None:
        return f"Weights stored in fp32: fp16 would move a validation probability by {change:.4f}, over the tolerance."
    return "Weights stored in fp32."


def _eval_results(metrics: dict[str, Any]) -> list:
    from huggingface_hub import EvalResult

    return [
        EvalResult(
            task_type="image-classification",
            dataset_type=DATASET_ID,
            dataset_name="Chest X-ray pneumonia (patient-grouped validation split of train)",
            dataset_split="validation",
            metric_type=name,
            metric_value=round(float(metrics[name]), 4),
        )
        for name in ("roc_auc", "accuracy", "recall", "specificity")
    ]


def _plain_loading(family: str) -> str:
    if family == "timm":
        return (
            "Without pneumo_hf: `timm.create_model('local-dir:FOLDER', pretrained=True)` (or `hf-hub:ORG/NAME`), "
            "or `transformers.TimmWrapperForImageClassification.from_pretrained(FOLDER)`; preprocessing is in `config.json` "
            "(`pretrained_cfg`). Convert the X-ray to grey, repeat to 3 channels, resize to the input size, normalise."
        )
    return "Without pneumo_hf: `transformers.AutoModelForImageClassification.from_pretrained(FOLDER)` with `AutoImageProcessor`."


def push_folder(folder: Path, repo_id: str, token: Optional[str] = None, commit_message: str = "Upload pneumo-hf model") -> str:
    """create_repo(exist_ok=True) then upload_folder; returns the repo URL. The folder is left as it is."""
    token = token or os.environ.get("HF_TOKEN")  # None lets huggingface_hub use the login cache
    if not hub_reachable():
        raise HubError(f"Cannot reach the Hub to push {repo_id}; the model stays in {folder}. Push it later with `hf upload {repo_id} {folder}`.")
    try:
        url = create_repo(repo_id, token=token, exist_ok=True, repo_type="model")
        upload_folder(repo_id=url.repo_id, folder_path=str(folder), token=token, commit_message=commit_message, ignore_patterns=["checkpoints/*", "best_model/*"])
    except Exception as error:  # HTTP, auth and validation errors all end the same way for the user
        raise HubError(f"Push to {repo_id} failed ({type(error).__name__}); the model stays in {folder}. Check `hf auth whoami` and the repo id.") from None
    logger.info("Pushed %s to %s", folder, url)
    return str(url)
