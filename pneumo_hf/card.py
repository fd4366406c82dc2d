"""The model card: README.md of a model folder, written from the folder's own files (results, summary, calibration,
adaptation, domain check, the maintainers' figures) through `model_card_template.md`, as the Hub shows it.

    from pneumo_hf.card import write_model_card
    write_model_card(Path("runs/b0"), model_id="ORG/NAME")
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import timm
from huggingface_hub import ModelCard, ModelCardData

from .checkpoints import weights_source_sentence
from .folder import ADAPTATION, CALIBRATION, CARD, DOMAIN_CHECK, PLOT_KINDS, TRAINING_CURVES, ModelFolder, plot_name
from .hub import DATASET_ID
from .labels import LABELS
from .schema import Storage

logger = logging.getLogger(__name__)

__all__ = ["readable_split", "write_model_card"]

CARD_TEMPLATE = Path(__file__).with_name("model_card_template.md")
HUB_METRIC_TYPES = {"sensitivity": "recall"}  # the Hub's model-index knows sensitivity by the name of its metric, recall


def write_model_card(folder: Path, model_id: Optional[str] = None) -> None:
    """README.md of a model folder, written from the folder's own files (`pneumo_hf.folder.ModelFolder`) through
    huggingface_hub's ModelCard and `model_card_template.md`: training_summary.json (how it was trained),
    all_results.json (the figures), domain_check.json, calibration.json, maintainers_results.json (when it is about
    these weights) and the plots present.

        python train/write_card.py --model runs/b0 --test_dev_dir ../shared/data/chest_xray_224/test_dev   # again, by hand
    """
    folder = ModelFolder(folder)
    summary, results = folder.summary(), folder.results()
    metrics, test_dev = results.validation, results.test_dev
    domain_check = folder.read(DOMAIN_CHECK)
    maintainers = folder.maintainers_results()
    calibration = folder.report(CALIBRATION)
    adaptation = folder.report(ADAPTATION)
    model_id = model_id or summary.model_id
    model_name = model_id or folder.path.name
    card_data = ModelCardData(
        license="cc-by-4.0",
        library_name="timm" if summary.family == "timm" else "transformers",
        pipeline_tag="image-classification",
        datasets=[DATASET_ID],
        tags=["medical-imaging", "chest-x-ray", "pneumonia", "pneumo-hf"],
        model_name=model_name,
        base_model=_hub_id(summary.base_model),
        eval_results=_eval_results(metrics, test_dev, adaptation),
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(CARD_TEMPLATE),
        model_name=model_name,
        architecture=summary.architecture,
        family=summary.family,
        start=_start(summary.json()),
        n=metrics["n"],
        rows="\n".join(f"| {name} | {metrics[name]:.4f} |" for name in ("roc_auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "ece")),
        threshold=metrics["threshold"],
        threshold_rule=summary.threshold_rule,
        temperature=summary.temperature,
        views_line=_views_line(summary.test_time_views),
        storage_line=_storage_line(summary.storage),
        confusion_matrix=metrics["confusion_matrix"],
        failure_modes=_failure_modes(metrics["confusion_matrix"], test_dev, maintainers),
        test_dev=test_dev,
        test_dev_plots=_plots(folder, "test_dev", "official test split, half A"),
        validation_plots=_plots(folder, "validation", "validation split") + _training_curves(folder),
        maintainers=_maintainers_table(maintainers) if maintainers else None,
        calibration=_calibration_table(calibration) if calibration else None,
        adaptation=_adaptation_table(adaptation) if adaptation else None,
        domain_check=_readable_domain_check(domain_check) if domain_check else None,
        ensemble=summary.architecture.startswith("pneumo_ensemble"),
        test_dev_confusion=" ".join(str(count) for row in test_dev["confusion_matrix"] for count in row) if test_dev else "",
        model_path=model_id or "path/to/this/folder",
        plain_loading=_plain_loading(summary.family, summary.architecture),
        labels=list(LABELS),
        linear_probe_c=summary.linear_probe_c,
        **{key: getattr(summary, key) for key in ("input_size", "mean", "std", "loss", "class_weights", "epochs_run", "train_images", "train_seconds", "command")},
    )
    card.save(folder.file(CARD))


def _maintainers_table(found: dict[str, Any]) -> dict[str, Any]:
    def cell(row: dict[str, Any], key: str) -> str:
        if row.get(key) is None:
            return "—"
        return f"{100 * row[key]:.1f} %" if key == "domain_warned" else f"{row[key]:g}"  # as precise as the maintainers gave it

    keys = ("accuracy", "roc_auc", "sensitivity", "specificity", "ece", "domain_warned")
    splits = [{"name": row["name"], "films": row["films"], "cells": [cell(row, key) for key in keys]} for row in found["splits"]]
    return {**found, "splits": splits}


def _adaptation_table(report: dict[str, Any]) -> dict[str, Any]:
    """adaptation.json (written by `pneumo-hf adapt`) as the card's rows: accuracy, ROC-AUC, sensitivity, specificity
    and both ECEs."""
    keys = ("accuracy", "roc_auc", "sensitivity", "specificity", "ece", "ece_pneumonia")
    crossfit = report["crossfit"]
    rows = [
        ("stored model, on all the films", report["before"]),
        (f"stored model, cross-fitted halves ({crossfit['stored']['halves']})", crossfit["stored"]),
        (f"adapted, cross-fitted ({crossfit['adapted']['halves']} halves)", crossfit["adapted"]),
    ]
    votes = ", ".join(f"{name} {vote:.3f}" for name, vote in report["votes"].items())
    return {**report, "votes_line": votes, "rows": [{"name": name, "cells": [f"{figures[key]:.3f}" for key in keys]} for name, figures in rows]}


def _calibration_table(report: dict[str, Any]) -> dict[str, Any]:
    """calibration.json (written by `pneumo-hf calibrate`) as the card's rows."""

    def cells(figures: dict[str, Any]) -> list[str]:
        head = [f"{figures['temperature']:.3f}", f"{figures['threshold']:.3f}"] if "temperature" in figures else ["", ""]
        return head + [f"{figures[key]:.3f}" for key in ("accuracy", "sensitivity", "specificity", "ece")]

    crossfit = report["crossfit"]
    rows = [
        ("stored (before), on all the films", report["before"]),
        ("refit, on the same films (optimistic)", report["after"]),
        (f"stored, cross-fitted ({crossfit['stored']['halves']} halves)", crossfit["stored"]),
        (f"refit, cross-fitted ({crossfit['refit']['halves']} halves)", crossfit["refit"]),
    ]
    return {**report, "rows": [{"name": name, "cells": cells(figures)} for name, figures in rows]}


def _plots(folder: ModelFolder, split: str, described: str) -> list[dict[str, str]]:
    """The split's plots present in the folder, in the card's order, with their alt text."""
    return [{"file": plot_name(split, kind), "alt": f"{kind.replace('_', ' ')}, {described}"} for kind in PLOT_KINDS if folder.has(plot_name(split, kind))]


def _training_curves(folder: ModelFolder) -> list[dict[str, str]]:
    return [{"file": TRAINING_CURVES, "alt": "curves, validation during training"}] if folder.has(TRAINING_CURVES) else []


READABLE_SPLITS = {"test_dev": "official test split, half A", "adult_check": "adult films from other sources (adult_check)"}


def readable_split(name: str) -> str:
    """A data folder as a card reader knows it: `../shared/data/chest_xray_224/test_dev` is the official test
    split, half A; other paths are shown by their last part only."""
    last = Path(name).name if "/" in name else name
    return READABLE_SPLITS.get(last, last)


def _readable_domain_check(check: dict[str, Any]) -> dict[str, Any]:
    reported = {readable_split(name): share for name, share in check.get("reported", {}).items()}
    return {**check, "calibration": readable_split(check["calibration"]), "reported": reported}


def _hub_id(base_model: Optional[str]) -> Optional[str]:
    """`base_model` for the card's metadata: a Hub id (ORG/NAME) only, never a local path."""
    return base_model if base_model and base_model.count("/") == 1 and not Path(base_model).exists() else None


def _start(summary: dict[str, Any]) -> str:
    """How the weights began, for the card's first paragraph (an ensemble's: each member's)."""
    if summary.get("members"):
        return "an ensemble of " + "; and ".join(_described(member) for member in summary["members"]) + ";"
    base_model, revision = summary.get("base_model"), summary.get("base_model_revision")
    if summary["trained_from_scratch"] or not base_model:
        return "trained from random initialisation (no pretrained weights)"
    at = f" at revision `{revision[:12]}`" if revision else ""
    if summary.get("weights_source"):  # a packaged checkpoint (pneumo-hf checkpoint): no Hub id can be claimed for it
        return f"fine-tuned from {weights_source_sentence(summary['weights_source'])}"
    if _hub_id(base_model):
        return f"fine-tuned from [`{base_model}`](https://huggingface.co/{base_model}){at}"
    return f"fine-tuned from the checkpoint in the local folder `{Path(base_model).name}`"


def _described(member: dict[str, Any]) -> str:
    """One member of an ensemble: its architecture and how it began (a nested ensemble: each of its own members)."""
    if member.get("members"):
        return f"`{member['architecture']}` (" + "; ".join(_described(inner) for inner in member["members"]) + ")"
    return f"`{member['architecture']}` {_start(member)}" + (" with a linear-probe head" if member.get("linear_probe_c") else "")


def _failure_modes(confusion_matrix: list, test_dev: Optional[dict[str, Any]], maintainers: Optional[dict[str, Any]]) -> str:
    (tn, fp), (fn, tp) = confusion_matrix
    lines = []
    if test_dev:
        (dev_tn, dev_fp), (dev_fn, dev_tp) = test_dev["confusion_matrix"]
        lines.append(f"- On the official test split, half A: {dev_fp} of {dev_fp + dev_tn} NORMAL children called PNEUMONIA, {dev_fn} of {dev_fn + dev_tp} PNEUMONIA films missed.")
    adults = [row for row in (maintainers or {}).get("splits", []) if "adult" in row["name"]]
    measured = "".join(f" On the {row['name']} the maintainers measured ROC-AUC {row['roc_auc']:.2f}; the domain check warned on {100 * row['domain_warned']:.1f} % of its films." for row in adults)
    lines += [
        f"- On validation, at the stored threshold: {fn} of {fn + tp} PNEUMONIA films missed, {fp} of {fp + tn} NORMAL films flagged.",
        f"- **Adults: do not use it on them.** It learnt from children's films only.{measured}",
        f"- Not measured here: lateral or posterior-anterior films, other hospitals and scanners{'' if test_dev else ', the official test split'}.",
    ]
    return "\n".join(lines) + """
- The Grad-CAM heatmap is coarse (the last feature map) and can fall outside the lungs: read it as where the
  model looked, not as an outline of a lesion."""


def _views_line(views: list) -> str:
    if not views:
        return "No test-time augmentation."
    return f"Test-time augmentation: `pneumo_hf` averages the logits of the image and its views {views}; figures, temperature and threshold include it."


def _storage_line(storage: Storage) -> str:
    change = storage.fp16_max_change
    if storage.dtype == "mixed":
        return f"Weights of {', '.join(storage.fp16_members)} stored in fp16, the rest in fp32: on validation no PNEUMONIA probability differs from all-fp32 by more than {change:.5f}; the figures above are the stored weights'."
    if storage.dtype == "float16":
        return f"Weights stored in fp16: on validation no PNEUMONIA probability differs from fp32 by more than {change:.5f}; the figures above are the fp16 weights'."
    if change is not None:
        return f"Weights stored in fp32: fp16 would move a validation probability by {change:.4f}, over the tolerance."
    return "Weights stored in fp32."


def _eval_results(validation: dict[str, Any], test_dev: Optional[dict[str, Any]], adaptation: Optional[dict[str, Any]] = None) -> list:
    """`model-index` entries: the test_dev figures first when there are any (cross-fitted where an adaptation learnt
    from those films), then validation."""
    from huggingface_hub import EvalResult

    if adaptation and adaptation["data"] == readable_split("test_dev"):
        splits = [("Chest X-ray pneumonia (official test split, half A; cross-fitted: the adapted head saw these films)", "test", adaptation["crossfit"]["adapted"])]
    else:
        splits = [("Chest X-ray pneumonia (official test split, half A)", "test", test_dev)] if test_dev else []
    splits.append(("Chest X-ray pneumonia (patient-grouped validation split of train)", "validation", validation))
    return [
        EvalResult(
            task_type="image-classification",
            dataset_type=DATASET_ID,
            dataset_name=dataset_name,
            dataset_split=split,
            metric_type=HUB_METRIC_TYPES.get(name, name),
            metric_value=round(float(figures[name]), 4),
        )
        for dataset_name, split, figures in splits
        for name in ("roc_auc", "accuracy", "sensitivity", "specificity")
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
