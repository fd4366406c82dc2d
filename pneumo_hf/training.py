"""The training run behind `train/train.py`: one Accelerate `prepare`, the epochs, checkpoints and resume, and at the
end the model folder through `pneumo_hf.evaluation.finalize`. Its flags are `pneumo_hf.training_args`; the loss and
learning rates `pneumo_hf.optimization`; the loaders `pneumo_hf.film_cache.training_loaders`.

    accelerate launch train/train.py --model_name_or_path efficientnet_b0 \
        --train_dir ../shared/data/chest_xray_224/train --output_dir runs/b0 --num_train_epochs 1
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from timm.data import Mixup
from timm.utils import ModelEmaV3
from torch import nn
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from . import metrics
from .augmentation import Augmentation
from .data import class_weights, collate, load_evaluation_set
from .domain import fit_domain_check
from .errors import ArgumentError
from .evaluation import finalize, fit_calibration, predict_logits, run_splits, split_loader
from .film_cache import cached_films, training_loaders
from .folder import BEST_MODEL, CHECKPOINTS, TRAINING_CURVES, ModelFolder
from .hub import push_folder
from .labels import LABELS
from .models import PneumoniaClassifier, build_classifier, head_of
from .optimization import freeze_backbone, freeze_lower_layers, make_loss, parameter_groups
from .schema import Results, Run, Storage
from .training_args import TrainingArguments

logger = logging.getLogger(__name__)

__all__ = ["TrainingArguments", "train"]

@dataclass
class _State:
    """What a checkpoint needs beyond Accelerate's own state, saved as trainer_state.json."""

    epoch: int = 0
    batches_done: int = 0  # in `epoch`
    completed_steps: int = 0
    best_roc_auc: float = -1.0
    epochs_without_improvement: int = 0
    skipped_images: int = 0
    train_seconds: float = 0.0  # over all sessions of the run
    history: list = field(default_factory=list)


@dataclass
class _Run:
    """Everything one training run works with, prepared once by `train()` and handed to its steps."""

    args: TrainingArguments
    accelerator: Accelerator
    classifier: PneumoniaClassifier  # unwrapped: what is saved
    model: nn.Module  # prepared: what is trained
    ema: Optional[ModelEmaV3]
    criterion: Any
    mixup: Optional[Mixup]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: Any
    validation_loader: Any
    weights: torch.Tensor
    train_set: datasets.Dataset
    validation_set: datasets.Dataset
    test_dev_loader: Any  # None without --test_dev_dir
    command: str
    augment: Optional[nn.Module] = None  # the batch augmentation of the film cache
    state: _State = field(default_factory=_State)


def train(args: TrainingArguments, command: str = "") -> Optional[Results]:
    """Run the whole training and write the model folder to `args.output_dir`; returns all_results.json's content
    (None on the processes other than the main one)."""
    output_dir = ModelFolder(args.output_dir).writable().path
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=args.report_to if args.with_tracking else None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), automatic_checkpoint_naming=True, total_limit=args.checkpoints_total_limit),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        # a frozen backbone gives no gradients: DDP must not wait for them
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=args.freeze_backbone_epochs > 0)],
    )
    set_seed(args.seed)
    train_set, validation_set = run_splits(asdict(args))
    test_dev_set = load_evaluation_set(data_dir=args.test_dev_dir) if args.test_dev_dir else None  # a bad folder fails now, not after training
    weights = class_weights(train_set["label"])
    logger.info("Train %d images (%d patients), validation %d images; class weights %s", len(train_set), len(set(train_set["patient"])), len(validation_set), weights.tolist())

    classifier = build_classifier(args.model_name_or_path, args.pretrained, args.image_size, args.config_overrides, args.drop_rate)
    if classifier.trained_from_scratch:
        logger.warning("Training %s from random initialisation (no pretrained weights).", classifier.architecture)
    if args.freeze_backbone_epochs:
        head_of(classifier)  # a model without a separate head fails now, not after the first epoch
    if args.trainable_layers:
        freeze_lower_layers(classifier, args.trainable_layers)  # a model without timm's layer grouping fails now, too
    probe_started = time.time()
    if args.linear_probe and not args.resume_from_checkpoint:  # a resumed run's head comes from its checkpoint
        _fit_linear_probe(args, classifier, train_set)
    probe_seconds = time.time() - probe_started
    train_loader, validation_loader, augment = training_loaders(
        classifier, train_set, validation_set, batch_size=args.per_device_train_batch_size, eval_batch_size=args.per_device_eval_batch_size,
        num_workers=args.dataloader_num_workers, film_cache=args.film_cache, cache_dir=args.film_cache_dir,
        augmentation=Augmentation(args.aug_strength, args.intensity_aug, args.random_erasing),
    )
    groups = parameter_groups(classifier, layer_decay=args.layer_decay, weight_decay=args.weight_decay, learning_rate=args.learning_rate)
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate, weight_decay=args.weight_decay)
    # The prepared scheduler steps once per process per optimizer step, so it is sized on the whole
    # loader; the progress bar below counts this process's steps, on its shard of the loader.
    steps_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)
    total_steps = args.num_train_epochs * steps_per_epoch
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(args.warmup_ratio * total_steps), total_steps)
    model, optimizer, train_loader, validation_loader, scheduler = accelerator.prepare(classifier, optimizer, train_loader, validation_loader, scheduler)
    test_dev_loader = accelerator.prepare(split_loader(classifier, test_dev_set, args.per_device_eval_batch_size)) if test_dev_set is not None else None
    mixup = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, label_smoothing=args.label_smoothing, num_classes=len(LABELS)) if args.mixup or args.cutmix else None
    criterion = make_loss(args.loss, weights.to(accelerator.device), 0.0 if mixup else args.label_smoothing, args.focal_gamma)  # Mixup smooths its own targets
    ema = ModelEmaV3(accelerator.unwrap_model(model), decay=args.model_ema_decay, use_warmup=True) if args.model_ema_decay else None
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    steps_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)
    total_steps = args.num_train_epochs * steps_per_epoch

    state = _resume(accelerator, args.resume_from_checkpoint, output_dir) if args.resume_from_checkpoint else _State(train_seconds=probe_seconds)
    augment = augment.to(accelerator.device) if augment is not None else None
    run = _Run(args, accelerator, classifier, model, ema, criterion, mixup, optimizer, scheduler, train_loader, validation_loader, weights, train_set, validation_set, test_dev_loader, command, augment, state)
    if args.with_tracking:
        accelerator.init_trackers("pneumo_hf", {k: v for k, v in asdict(args).items() if isinstance(v, (int, float, str, bool))})
    progress = tqdm(total=total_steps, initial=state.completed_steps, disable=not accelerator.is_local_main_process, desc="train")
    if args.linear_probe and not state.history:
        _validate(run, -1, float("nan"))  # the probe is "epoch -1": the start LP-FT must beat, and the whole run with 0 epochs
    for epoch in range(state.epoch, args.num_train_epochs):
        started = time.time()
        train_loss = _train_one_epoch(run, epoch, progress)
        _validate(run, epoch, train_loss)
        state.epoch, state.batches_done = epoch + 1, 0
        state.train_seconds += time.time() - started
        if args.checkpointing_steps == "epoch":
            _save_checkpoint(accelerator, state)
        if args.early_stopping_patience and state.epochs_without_improvement >= args.early_stopping_patience:
            logger.info("Early stopping: %d epochs without a better validation ROC-AUC.", state.epochs_without_improvement)
            break
    progress.close()
    accelerator.wait_for_everyone()
    results = _finish(run)
    if args.with_tracking:
        accelerator.end_training()
    return results


def _fit_linear_probe(args: TrainingArguments, classifier: PneumoniaClassifier, train_set: datasets.Dataset) -> None:
    """The head as a logistic regression on the backbone's pooled features of the train split (pneumo_hf.linear_probe)."""
    from .linear_probe import fit_linear_head, pooled_features, set_linear_head

    films = cached_films(train_set, classifier.data_config, args.film_cache_dir, num_workers=args.dataloader_num_workers)
    features, labels = pooled_features(classifier, films, args.per_device_eval_batch_size)
    set_linear_head(classifier, *fit_linear_head(features, labels, args.linear_probe_c, args.seed))


def _validate(run: _Run, epoch: int, train_loss: float) -> None:
    """Score the validation split, log the epoch's row, and keep the weights as best_model when its ROC-AUC improved."""
    args, accelerator, state = run.args, run.accelerator, run.state
    validated = run.ema.module if run.ema is not None else run.model
    logits, labels = predict_logits(validated, run.validation_loader, accelerator)
    row = _epoch_summary(epoch, train_loss, logits, labels)
    state.history.append(row)
    accelerator.print(f"epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "epoch"))
    if args.with_tracking:
        accelerator.log(row, step=state.completed_steps)
    improved = row["validation_roc_auc"] > state.best_roc_auc
    state.best_roc_auc = max(state.best_roc_auc, row["validation_roc_auc"])
    state.epochs_without_improvement = 0 if improved else state.epochs_without_improvement + 1
    if improved and accelerator.is_main_process:
        accelerator.unwrap_model(validated).save_pretrained(ModelFolder(args.output_dir).file(BEST_MODEL))


def _train_one_epoch(run: _Run, epoch: int, progress) -> float:
    """One pass over the training data from where the run's state says it stopped; returns the mean loss."""
    args, accelerator, model, ema, state, loader = run.args, run.accelerator, run.model, run.ema, run.state, run.train_loader
    criterion, optimizer, scheduler = run.criterion, run.optimizer, run.scheduler
    model.train()
    if args.freeze_backbone_epochs:
        frozen = epoch < args.freeze_backbone_epochs
        freeze_backbone(run.classifier, frozen)
        if epoch == args.freeze_backbone_epochs:
            logger.info("Epoch %d: the backbone is unfrozen; everything trains from now on.", epoch)
    if args.trainable_layers:
        freeze_lower_layers(run.classifier, args.trainable_layers)
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    active = accelerator.skip_first_batches(loader, state.batches_done) if state.batches_done else loader
    losses = []
    for batch in active:
        state.batches_done += 1
        state.skipped_images += int(batch["n_skipped"])
        pixel_values, targets = batch["pixel_values"], batch["labels"]
        if run.augment is not None and len(targets):
            pixel_values = run.augment(pixel_values)
        if run.mixup is not None:  # timm's Mixup blends the batch with its mirror: an even number of films
            even = len(targets) - len(targets) % 2
            pixel_values, targets = run.mixup(pixel_values[:even], targets[:even]) if even else (pixel_values[:0], targets[:0])
        if len(targets) == 0:
            continue
        with accelerator.accumulate(model):
            loss = criterion(model(pixel_values).float(), targets)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        losses.append(loss.detach().float().item())
        if accelerator.sync_gradients:
            state.completed_steps += 1
            if ema is not None:
                ema.update(accelerator.unwrap_model(model), step=state.completed_steps)
            progress.update(1)
            progress.set_postfix(loss=f"{losses[-1]:.4f}")
            if args.checkpointing_steps not in (None, "epoch") and state.completed_steps % int(args.checkpointing_steps) == 0:
                _save_checkpoint(accelerator, state)
    if state.skipped_images:
        logger.warning("%d unreadable training images skipped so far.", state.skipped_images)
    return float(np.mean(losses)) if losses else float("nan")


def _epoch_summary(epoch: int, train_loss: float, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    scores = metrics.probabilities(logits)[:, 1]
    found = metrics.classification_metrics(labels, scores)
    validation_loss = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels).long()))
    return {"epoch": epoch, "train_loss": train_loss, "validation_loss": validation_loss, "validation_roc_auc": found["roc_auc"], "validation_accuracy": found["accuracy"]}


def _save_checkpoint(accelerator: Accelerator, state: _State) -> None:
    folder = Path(accelerator.save_state())
    if accelerator.is_main_process:
        (folder / "trainer_state.json").write_text(json.dumps(asdict(state), indent=2))


def _resume(accelerator: Accelerator, checkpoint: str, output_dir: Path) -> _State:
    if checkpoint == "latest":
        found = sorted(ModelFolder(output_dir).file(CHECKPOINTS).glob("checkpoint_*"), key=lambda p: int(p.name.split("_")[-1]))
        if not found:
            raise ArgumentError(f"--resume_from_checkpoint latest: no checkpoint in {ModelFolder(output_dir).file(CHECKPOINTS)}; start without the flag.")
        checkpoint = str(found[-1])
    path = Path(checkpoint)
    if not (path / "trainer_state.json").is_file():
        raise ArgumentError(f"--resume_from_checkpoint {checkpoint}: not a checkpoint folder of this trainer (no trainer_state.json).")
    accelerator.load_state(str(path))
    number = re.search(r"(\d+)$", path.name)
    accelerator.project_configuration.iteration = int(number.group(1)) + 1 if number else 0
    state = _State(**json.loads((path / "trainer_state.json").read_text()))
    logger.info("Resumed from %s: epoch %d, batch %d, step %d.", path, state.epoch, state.batches_done, state.completed_steps)
    return state


def _fit_domain_check(run: _Run, folder: ModelFolder) -> None:
    """The domain check (pneumo_hf.domain) fitted on the training films, its cut calibrated so that at most 5 % of
    the validation split is flagged (`pneumo-hf fit-domain-check` recalibrates it on other films)."""

    def batches(dataset: datasets.Dataset) -> list[torch.Tensor]:
        if run.args.film_cache:  # the same pixels as the JPEGs give, without decoding them again
            films = cached_films(dataset, run.classifier.data_config, run.args.film_cache_dir, num_workers=run.args.dataloader_num_workers)
            loader = torch.utils.data.DataLoader(films, batch_size=64, collate_fn=collate)
        else:
            loader = split_loader(run.classifier, dataset)
        return [batch["pixel_values"] for batch in loader if len(batch["pixel_values"])]

    check = fit_domain_check(run.classifier, batches(run.train_set), batches(run.validation_set), calibration_name="the run's validation split")
    check.save(folder.path)
    logger.info("Domain check fitted on %d training films; %.1f %% of validation flagged.", check.info["train_films"], 100 * check.info["calibration_flagged"])


def _choose_storage(args: TrainingArguments, logits: np.ndarray, fp16_logits: Optional[np.ndarray], temperature: float) -> tuple[Storage, np.ndarray]:
    """fp16 when --save_fp16 and no validation probability moves by more than --fp16_tolerance, else fp32;
    and the validation logits of the weights so stored."""
    if fp16_logits is None:
        return Storage(), logits
    change = metrics.probability_change(logits, fp16_logits, temperature)
    if change > args.fp16_tolerance:
        logger.warning("fp16 weights move a validation probability by %.4f, over --fp16_tolerance %g: the weights are stored in fp32.", change, args.fp16_tolerance)
        return Storage(fp16_max_change=change), logits
    logger.info("Weights stored in fp16: validation probabilities within %.5f of fp32.", change)
    return Storage("float16", change), fp16_logits


def _finish(run: _Run) -> Optional[Results]:
    """Best weights back, temperature and threshold fitted on validation (with the test-time views), the domain check,
    then the model folder (`pneumo_hf.evaluation.finalize`; fp16 with --save_fp16, if within tolerance). A finished
    run's folder is rewritten by resuming it with new --test_time_views or --save_fp16."""
    args, accelerator, classifier, validation_loader, state = run.args, run.accelerator, run.classifier, run.validation_loader, run.state
    folder = ModelFolder(args.output_dir)
    best = PneumoniaClassifier.from_pretrained(folder.file(BEST_MODEL))
    accelerator.unwrap_model(classifier).load_state_dict(best.state_dict())
    candidates = {"float32": classifier, **({"float16": classifier.fp16_rounded()} if args.save_fp16 else {})}
    logits, labels = predict_logits(classifier, validation_loader, accelerator, args.test_time_views)
    fp16_logits = predict_logits(candidates["float16"], validation_loader, accelerator, args.test_time_views)[0] if args.save_fp16 else None
    test_dev = {dtype: predict_logits(model, run.test_dev_loader, accelerator, args.test_time_views) for dtype, model in candidates.items()} if run.test_dev_loader else {}
    if not accelerator.is_main_process:
        return None
    classifier.test_time_views = tuple(args.test_time_views)
    calibration = fit_calibration(logits, labels, args.min_sensitivity)  # on fp32, before the storage is chosen
    storage, stored_logits = _choose_storage(args, logits, fp16_logits, calibration[0])  # the figures are the stored weights'
    _fit_domain_check(run, folder)
    metrics.plot_history(state.history, folder.file(TRAINING_CURVES))
    trained = Run(
        command=run.command, loss=args.loss, class_weights=[round(w, 3) for w in run.weights.tolist()], epochs_run=state.epoch, train_images=len(run.train_set),
        train_seconds=state.train_seconds, skipped_images=state.skipped_images, linear_probe_c=args.linear_probe_c if args.linear_probe else None,
    )
    found = finalize(
        classifier, folder.path, (stored_logits, labels), args.min_sensitivity, trained, storage=storage, calibration=calibration,
        test_dev=test_dev.get(storage.dtype), arguments=asdict(args), model_id=args.hub_model_id,
    )
    if args.push_to_hub:
        push_folder(folder.path, args.hub_model_id, args.hub_token)
    return found
