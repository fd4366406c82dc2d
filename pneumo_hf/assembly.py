"""Join trained model folders into one ensemble model folder (`pneumo_hf.ensemble`), fitted like a training run.

    pneumo-hf ensemble runs/b0 runs/keras_cnn --output_dir runs/ensemble --test_dev_dir ../shared/data/chest_xray_224/test_dev
    from pneumo_hf.assembly import assemble
    assemble(["runs/ensemble#members.0", "runs/r18"], "runs/other")      # one member of an ensemble folder

The members must be timm CNNs validated on one split (same data, same split seed); `FOLDER#members.I` (nested:
`FOLDER#members.1.members.0`) takes one member of an ensemble folder as it is there. The ensemble's temperature and
threshold are fitted on that validation split, with the first member's test-time views (or `test_time_views`), as
training fits them; its domain check is the first member's (the same first convolution on the same input). Writes
config.json + model.safetensors, all_results.json (validation_*, and test_dev_* with `test_dev_dir`, scored as
`pneumo-hf evaluate` scores), the model card and its plots. Fit the first member's domain check first
(`pneumo-hf fit-domain-check`): the card then quotes the shares it measured.
"""

from __future__ import annotations

import copy
import logging
import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import timm
from accelerate import Accelerator

from . import metrics
from .data import load_evaluation_set
from .ensemble import Ensemble, member_spec
from .evaluation import finalize, predict_logits, split_loader, split_seed, validation_split_of
from .folder import ARGUMENTS, ModelFolder
from .models import ModelError, PneumoniaClassifier, resolve_model_folder
from .schema import Results, Run, Storage

logger = logging.getLogger(__name__)

__all__ = ["assemble", "build", "fp16_members", "load_members", "take"]
SPLIT_KEYS = ("dataset_name", "train_dir", "validation_dir", "validation_fraction", "max_train_samples")


def take(reference: str) -> tuple[PneumoniaClassifier, ModelFolder, dict]:
    """One member named on the command line: a model folder or Hub id, or `FOLDER#members.I` (nested:
    `FOLDER#members.1.members.0`), one member of an ensemble folder as that folder holds it (weights, input size,
    normalisation, temperature). Returns the member, the folder it comes from, and how it began (for the card)."""
    name, _, path = reference.partition("#")
    folder = resolve_model_folder(name)
    classifier = PneumoniaClassifier.from_pretrained(folder).eval()
    if not path:
        return classifier, ModelFolder(folder), origin_of(folder, classifier)
    if not re.fullmatch(r"members\.\d+(\.members\.\d+)*", path):
        raise ModelError(f"{reference}: name a member of an ensemble folder as FOLDER#members.I (nested: FOLDER#members.1.members.0).")
    backbone, spec, origins = classifier.backbone, None, _member_origins(ModelFolder(folder))
    indices = [int(index) for index in re.findall(r"\d+", path)]
    for index in indices:
        if not isinstance(backbone, Ensemble) or index >= len(backbone.members):
            raise ModelError(f"{reference}: {folder} has no such member; an ensemble's members are members.0, members.1, ...")
        spec, backbone = backbone.specs[index], backbone.members[index]
    top = origins[indices[0]] if indices[0] < len(origins) else {"trained_from_scratch": classifier.trained_from_scratch}
    architecture = backbone.pretrained_cfg["architecture"]
    origin = {**top, "architecture": architecture} if len(indices) == 1 else {"architecture": architecture, "trained_from_scratch": top["trained_from_scratch"], "base_model": None, "weights_source": None, "linear_probe_c": None}
    data_config = {"input_size": tuple(spec["input_size"]), "mean": tuple(spec["mean"]), "std": tuple(spec["std"]), "interpolation": backbone.pretrained_cfg.get("interpolation", "bilinear")}
    member = PneumoniaClassifier(copy.deepcopy(backbone), data_config, temperature=spec["temperature"], trained_from_scratch=origin["trained_from_scratch"], weights_source=origin.get("weights_source"))
    return member, ModelFolder(folder), origin


def load_members(references: list[str]) -> tuple[list[PneumoniaClassifier], list[dict], list[ModelFolder], list[dict]]:
    """The members, their training arguments, the folders they come from and their origins; refuses transformers or ViT
    members and different validation splits."""
    members, runs, sources, origins = [], [], [], []
    for reference in references:
        member, source, origin = take(reference)
        if not member.adapter.is_cnn:
            raise ModelError(f"{reference} is a {member.architecture}; an ensemble takes timm CNN members (its heatmap is Grad-CAM on each).")
        arguments = source.read(ARGUMENTS)
        if arguments is None:
            raise ModelError(f"{source.path} has no training_args.json: its validation split is unknown.")
        members.append(member)
        runs.append(arguments)
        sources.append(source)
        origins.append(origin)
    splits = {(tuple(run.get(key) for key in SPLIT_KEYS), split_seed(run)) for run in runs}
    if len(splits) > 1:
        raise ModelError("The members were validated on different splits (data, validation fraction or split seed differ); train them with one --split_seed.")
    return members, runs, sources, origins


def origin_of(folder: Path, member: PneumoniaClassifier) -> dict:
    """How a member began, for the card: its architecture, and its checkpoint or packaged weights if any; an ensemble
    member, its own members'."""
    summary = ModelFolder(folder).summary()
    return {
        "architecture": summary.architecture if summary else member.architecture,
        "trained_from_scratch": member.trained_from_scratch,
        "base_model": member.base_model,
        "weights_source": member.weights_source,
        "linear_probe_c": summary.linear_probe_c if summary else None,
        **({"members": summary.members} if summary and summary.members else {}),
    }


def _member_origins(folder: ModelFolder) -> list[dict]:
    summary = folder.summary()
    return (summary.members if summary else None) or []


def build(members: list[PneumoniaClassifier], views: list[str]) -> PneumoniaClassifier:
    """The ensemble classifier with the members' weights, fed as the first member is."""
    first = members[0]
    first_conv = first.backbone.pretrained_cfg.get("first_conv")
    overlay = {key: first.data_config[key] for key in ("input_size", "mean", "std", "interpolation")}
    if first_conv:
        overlay["first_conv"] = f"members.0.{first_conv}"
    specs = [member_spec(member.backbone, member.data_config, member.temperature) for member in members]
    backbone = timm.create_model("pneumo_ensemble", members=specs, pretrained_cfg_overlay=overlay)
    for slot, member in zip(backbone.members, members, strict=True):
        slot.load_state_dict(member.backbone.state_dict())
    trained_from_scratch = all(member.trained_from_scratch for member in members)
    return PneumoniaClassifier(backbone.eval(), dict(first.data_config), trained_from_scratch=trained_from_scratch, test_time_views=views)


def fp16_members(classifier: PneumoniaClassifier, validation, views: list[str], logits, labels, tolerance: float) -> tuple[list[str], float]:
    """The members (`members.I`) to store in fp16, taken one by one while the rounded ensemble's validation
    probabilities stay within `tolerance` of fp32; and the largest change of those kept (with none kept, the
    smallest change tried)."""
    temperature = metrics.fit_temperature(logits, labels)
    half, kept, tried = [], 0.0, []
    for index in range(len(classifier.backbone.members)):
        trial = half + [f"members.{index}"]
        change = metrics.probability_change(logits, predict_logits(classifier.fp16_rounded(trial), validation, Accelerator(), views)[0], temperature)
        logger.info("fp16 for %s: validation probabilities move by up to %.5f (tolerance %g)", ", ".join(trial), change, tolerance)
        tried.append(change)
        if change <= tolerance:
            half, kept = trial, change
    return half, (kept if half else min(tried))


def assemble(
    members: Sequence[str],
    output_dir: str,
    test_time_views: Optional[Sequence[str]] = None,
    min_sensitivity: Optional[float] = None,
    test_dev_dir: Optional[str] = None,
    save_fp16: bool = False,
    fp16_tolerance: float = 1e-3,
    hub_model_id: Optional[str] = None,
    program: str = "pneumo-hf ensemble",
    arguments: Sequence[str] = (),
) -> Results:
    """Build the ensemble of `members` into `output_dir` and return its figures (all_results.json). `save_fp16`
    stores in fp16 each member whose rounding keeps every validation probability within `fp16_tolerance` of fp32.
    `program` and its `arguments` are how the folder was asked for: its card gives them as the command."""
    classifiers, runs, sources, origins = load_members(list(members))
    test_dev_set = load_evaluation_set(data_dir=test_dev_dir) if test_dev_dir else None
    views = list(classifiers[0].test_time_views) if test_time_views is None else list(test_time_views)
    min_sensitivity = min_sensitivity or runs[0].get("min_sensitivity", 0.95)
    classifier = build(classifiers, views)
    validation = split_loader(classifier, validation_split_of(sources[0].path))
    logits, labels = predict_logits(classifier, validation, Accelerator(), views)
    half, fp16_change = fp16_members(classifier, validation, views, logits, labels, fp16_tolerance) if save_fp16 else ([], None)
    if half:  # everything below is measured on the weights as stored
        classifier = classifier.fp16_rounded(half)
        logits, labels = predict_logits(classifier, validation, Accelerator(), views)
    test_dev = predict_logits(classifier, split_loader(classifier, test_dev_set), Accelerator(), views) if test_dev_set is not None else None

    first = sources[0]
    output = ModelFolder(output_dir)
    first.copy_domain_check_to(output)  # the same first layers on the same input: the first member's check
    member_results = [source.results() for source in sources]  # a member taken from an ensemble: that ensemble's
    dtype = "float16" if len(half) == len(classifiers) else "mixed" if half else "float32"
    run = Run(
        command="".join(  # each member again from its own arguments file (or the ensemble it was taken from), then the ensemble
            f"# {name}: {origin['architecture']}, taken from the ensemble {source.path} (its card says how it was trained)\n" if "#" in name
            else f"# {name}: {origin['architecture']}, built by {program.removeprefix('python ')} (its card gives the command)\n" if origin.get("members")
            else f"# {name}: {member.architecture}, {result.epochs_run} epochs\npython train/train.py {shlex.quote(str(source.file(ARGUMENTS)))}\n"
            for name, source, member, origin, result in zip(members, sources, classifiers, origins, member_results, strict=True)
        ) + f"{program} " + shlex.join(arguments),
        loss="each member's own: " + ", ".join(f"{run['loss']} ({folder})" for run, folder in zip(runs, members, strict=True)),
        class_weights="per member",
        epochs_run=max(result.epochs_run for result in member_results),
        train_images=member_results[0].train_images,
        train_seconds=sum({str(source.path): result.train_seconds for source, result in zip(sources, member_results, strict=True)}.values()),
        members=list(members),
        member_origins=origins,
        member_epochs=[result.epochs_run for result in member_results],
    )
    storage = Storage(dtype, fp16_change, half)
    return finalize(classifier, output.path, (logits, labels), min_sensitivity, run, storage=storage, test_dev=test_dev, arguments=first.read(ARGUMENTS), model_id=hub_model_id)
