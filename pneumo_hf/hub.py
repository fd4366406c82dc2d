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

import timm
from huggingface_hub import ModelCard, ModelCardData, create_repo, upload_folder
from huggingface_hub.constants import ENDPOINT, HF_HUB_OFFLINE

from .labels import LABELS

logger = logging.getLogger(__name__)

__all__ = ["HubError", "hub_reachable", "write_model_card", "card_text", "push_folder"]

DATASET_ID = "hf-vision/chest-xray-pneumonia"
CARD_TEMPLATE = Path(__file__).with_name("model_card_template.md")
ADULT_FIGURE = (
    "It learnt from children's films only; on an external adult set the maintainers measured pneumo-hf's "
    "EfficientNet-B0 (the default model of commit 419459a, a member of the ensembles since) at ROC-AUC 0.43, worse than a coin."
)


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
    """README.md from `model_card_template.md` through huggingface_hub's ModelCard: Hub metadata (`model-index` holds
    the validation metrics) and the honest story of the model."""
    metrics = summary["validation"]
    model_name = model_id or Path(folder).name
    card_data = ModelCardData(
        license="cc-by-4.0",
        library_name="timm" if summary["family"] == "timm" else "transformers",
        pipeline_tag="image-classification",
        datasets=[DATASET_ID],
        tags=["medical-imaging", "chest-x-ray", "pneumonia", "pneumo-hf"],
        model_name=model_name,
        base_model=_hub_id(summary.get("base_model")),
        eval_results=_eval_results(metrics, summary.get("test_dev")),
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(CARD_TEMPLATE),
        model_name=model_name,
        architecture=summary["architecture"],
        family=summary["family"],
        start=_start(summary),
        n=metrics["n"],
        rows="\n".join(f"| {name} | {metrics[name]:.4f} |" for name in ("roc_auc", "accuracy", "recall", "specificity", "precision", "f1", "ece")),
        threshold=metrics["threshold"],
        threshold_rule=summary["threshold_rule"],
        temperature=summary["temperature"],
        views_line=_views_line(summary["test_time_views"]),
        storage_line=_storage_line(summary["storage"]),
        confusion_matrix=metrics["confusion_matrix"],
        failure_modes=_failure_modes(metrics["confusion_matrix"], summary.get("test_dev")),
        test_dev=summary.get("test_dev"),
        domain_check=summary.get("domain_check"),
        ensemble=summary["architecture"].startswith("pneumo_ensemble"),
        training_curves=Path(folder, "training_curves.png").is_file(),
        test_dev_dir=summary.get("test_dev_dir"),
        test_dev_confusion=" ".join(str(count) for row in summary["test_dev"]["confusion_matrix"] for count in row) if summary.get("test_dev") else "",
        model_path=model_id or "path/to/this/folder",
        plain_loading=_plain_loading(summary["family"], summary["architecture"]),
        labels=list(LABELS),
        **{key: summary[key] for key in ("input_size", "mean", "std", "loss", "class_weights", "epochs_run", "train_images", "train_seconds", "command")},
    )
    card.save(Path(folder, "README.md"))


def _hub_id(base_model: Optional[str]) -> Optional[str]:
    """`base_model` for the card's metadata: a Hub id (ORG/NAME) only, never a local path."""
    return base_model if base_model and base_model.count("/") == 1 and not Path(base_model).exists() else None


def _start(summary: dict[str, Any]) -> str:
    """How the weights began, for the card's first paragraph."""
    base_model, revision = summary.get("base_model"), summary.get("base_model_revision")
    if summary["trained_from_scratch"] or not base_model:
        return "trained from random initialisation (no pretrained weights)"
    at = f" at revision `{revision[:12]}`" if revision else ""
    if _hub_id(base_model):
        return f"fine-tuned from [`{base_model}`](https://huggingface.co/{base_model}){at}"
    return f"fine-tuned from the checkpoint in the local folder `{Path(base_model).name}`"


def card_text(folder: Path) -> str:
    """The model card of a model folder without its YAML metadata, or a line saying there is none."""
    path = Path(folder, "README.md")
    return ModelCard.load(path).text if path.is_file() else "This model folder has no model card."


def _failure_modes(confusion_matrix: list, test_dev: Optional[dict[str, Any]]) -> str:
    (tn, fp), (fn, tp) = confusion_matrix
    lines = []
    if test_dev:
        (dev_tn, dev_fp), (dev_fn, dev_tp) = test_dev["confusion_matrix"]
        lines.append(f"- On the official test split, half A: {dev_fp} of {dev_fp + dev_tn} NORMAL children called PNEUMONIA, {dev_fn} of {dev_fn + dev_tp} PNEUMONIA films missed.")
    lines += [
        f"- On validation, at the stored threshold: {fn} of {fn + tp} PNEUMONIA films missed, {fp} of {fp + tn} NORMAL films flagged.",
        f"- **Adults: do not use it on them.** {ADULT_FIGURE}",
        f"- Not measured here: lateral or posterior-anterior films, other hospitals and scanners{'' if test_dev else ', the official test split'}.",
    ]
    return "\n".join(lines) + """
- The Grad-CAM heatmap is coarse (the last feature map) and can fall outside the lungs: read it as where the
  model looked, not as an outline of a lesion."""


def _views_line(views: list) -> str:
    if not views:
        return "No test-time augmentation."
    return f"Test-time augmentation: `pneumo_hf` averages the logits of the image and its views {views}; figures, temperature and threshold include it."


def _storage_line(storage: dict[str, Any]) -> str:
    change = storage["fp16_max_change"]
    if storage["dtype"] == "mixed":
        return f"Weights of {', '.join(storage['fp16_members'])} stored in fp16, the rest in fp32: on validation no PNEUMONIA probability differs from all-fp32 by more than {change:.5f}; the figures above are the stored weights'."
    if storage["dtype"] == "float16":
        return f"Weights stored in fp16: on validation no PNEUMONIA probability differs from fp32 by more than {change:.5f}; the figures above are the fp16 weights'."
    if change is not None:
        return f"Weights stored in fp32: fp16 would move a validation probability by {change:.4f}, over the tolerance."
    return "Weights stored in fp32."


def _eval_results(validation: dict[str, Any], test_dev: Optional[dict[str, Any]]) -> list:
    """`model-index` entries: the test_dev figures first when there are any, then validation."""
    from huggingface_hub import EvalResult

    splits = [("Chest X-ray pneumonia (official test split, half A)", "test", test_dev)] if test_dev else []
    splits.append(("Chest X-ray pneumonia (patient-grouped validation split of train)", "validation", validation))
    return [
        EvalResult(
            task_type="image-classification",
            dataset_type=DATASET_ID,
            dataset_name=dataset_name,
            dataset_split=split,
            metric_type=name,
            metric_value=round(float(figures[name]), 4),
        )
        for dataset_name, split, figures in splits
        for name in ("roc_auc", "accuracy", "recall", "specificity")
    ]


def _plain_loading(family: str, architecture: str) -> str:
    name = architecture.split("(")[0]  # an ensemble's architecture names its members in brackets
    registered = name if timm.is_model(name) and timm.models.model_entrypoint(name).__module__.startswith("pneumo_hf.") else None
    if registered:
        return (
            f"Without pneumo_hf's predictor: `import pneumo_hf` (it registers `{registered}` with timm), then "
            "`timm.create_model('local-dir:FOLDER', pretrained=True)` (or `hf-hub:ORG/NAME`); transformers' TimmWrapper does not know "
            f"`{registered}`. Preprocessing is in `config.json` (`pretrained_cfg`)."
        )
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
        raise HubError(f"Push to {repo_id} failed ({type(error).__name__}); the model stays in {folder}. Check `hf auth whoami` and the repo id.") from error
    logger.info("Pushed %s to %s", folder, url)
    return str(url)
