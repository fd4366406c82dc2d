"""The training run behind `train/train.py`: arguments, one Accelerate `prepare`, epochs, checkpoints,
and the model folder at the end.

    accelerate launch train/train.py --model_name_or_path efficientnet_b0 \
        --train_dir ../shared/data/chest_xray_224/train --output_dir runs/b0 --num_train_epochs 1
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Sequence
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
from timm.optim import param_groups_layer_decay
from timm.utils import ModelEmaV3
from torch import nn
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from . import metrics
from .data import DataError, XrayDataset, class_weights, collate, load_evaluation_set, load_splits
from .domain import fit_domain_check
from .film_cache import BatchAugment, cached_films
from .hub import SUMMARY_FILE, push_folder, write_model_card
from .labels import LABELS
from .models import PneumoniaClassifier, build_classifier, head_of
from .transforms import build_transform
from .tta import VIEWS, logits_with_views

logger = logging.getLogger(__name__)

__all__ = ["TrainingArguments", "train", "evaluate", "make_loss", "run_splits", "split_seed", "validation_split_of"]

LOSSES = ("weighted_ce", "ce", "focal")


@dataclass
class TrainingArguments:
    """Flags of train/train.py; names follow transformers' run_image_classification_no_trainer.py."""

    output_dir: str = field(metadata={"help": "Where the model folder, checkpoints and logs go."})
    dataset_name: Optional[str] = field(default=None, metadata={"help": "A Hub data set id (hf-vision/chest-xray-pneumonia) or a local copy of one."})
    train_dir: Optional[str] = field(default=None, metadata={"help": "An image folder with NORMAL/ and PNEUMONIA/ subfolders."})
    validation_dir: Optional[str] = field(default=None, metadata={"help": "An image folder for validation; default: a patient-grouped split of train."})
    test_dev_dir: Optional[str] = field(default=None, metadata={"help": "An image folder of films never trained on (the official test split, half A): scored at the end as load_predictor() predicts; its figures lead the model card and go to all_results.json as test_dev_*."})
    validation_fraction: float = field(default=0.15, metadata={"help": "Share of train patients held out for validation."})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Use only this many training images (quick runs)."})
    model_name_or_path: str = field(default="efficientnet_b0", metadata={"help": "A Hub id of a timm or transformers checkpoint (timm/resnet50.a1_in1k, google/vit-base-patch16-224) or a local folder of one: its weights, a new head. A bare timm name (efficientnet_b0) or transformers model type (vit): random init."})
    pretrained: bool = field(default=False, metadata={"help": "With a bare timm name: start from timm's default pretrained tag (the Hub cache, then the Hub); default: random init."})
    freeze_backbone_epochs: int = field(default=0, metadata={"help": "Train the new head alone for this many epochs (backbone frozen: no gradients, BatchNorm in eval mode), then everything; ≥ --num_train_epochs is pure feature extraction."})
    linear_probe: bool = field(default=False, metadata={"help": "Start the head as a class-balanced logistic regression fitted to convergence on the backbone's pooled features of the train split (computed once, cached); with --num_train_epochs 0 that is the whole run, with more it is LP-FT."})
    linear_probe_c: float = field(default=0.003, metadata={"help": "Inverse L2 strength of --linear_probe's logistic regression on standardised features."})
    layer_decay: Optional[float] = field(default=None, metadata={"help": "Layer-wise learning-rate decay (timm's param_groups_layer_decay), e.g. 0.75: each layer down from the head learns at this factor of the one above."})
    config_overrides: Optional[str] = field(default=None, metadata={"help": "For a transformers model type: 'hidden_size=192,num_hidden_layers=12,...'."})
    image_size: Optional[int] = field(default=None, metadata={"help": "Input side in pixels; default: the model's own."})
    drop_rate: float = field(default=0.0, metadata={"help": "Dropout before the classifier (timm models); replaces the architecture's own, as timm's train.py --drop does (keras_cnn's is 0.5)."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Batch size per device for training."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Batch size per device for evaluation."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak AdamW learning rate."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay."})
    num_train_epochs: int = field(default=10, metadata={"help": "Epochs to train."})
    warmup_ratio: float = field(default=0.05, metadata={"help": "Share of the steps spent on linear warm-up before the cosine decay."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Batches accumulated per optimizer step."})
    mixed_precision: Optional[str] = field(default=None, metadata={"help": "no, fp16 or bf16; default: what `accelerate config` says."})
    loss: str = field(default="weighted_ce", metadata={"help": "weighted_ce (class-weighted cross-entropy), ce or focal."})
    focal_gamma: float = field(default=2.0, metadata={"help": "Focusing parameter of --loss focal."})
    label_smoothing: float = field(default=0.0, metadata={"help": "Label smoothing of the cross-entropy."})
    model_ema_decay: Optional[float] = field(default=None, metadata={"help": "Keep an exponential moving average of the weights (timm ModelEmaV3 with warm-up) up to this decay, e.g. 0.999; validation and the saved model use it."})
    aug_strength: float = field(default=1.0, metadata={"help": "Scale of rotation/shift/scale/brightness/contrast augmentation; 0 turns it off."})
    intensity_aug: float = field(default=0.0, metadata={"help": "Scale of intensity augmentation: random gamma, Gaussian blur and noise (other exposures and detectors); 0 turns it off, 1 is the default strength."})
    mixup: float = field(default=0.0, metadata={"help": "Mixup alpha (timm's --mixup, e.g. 0.2): train on blends of two films and their labels; 0 turns it off."})
    cutmix: float = field(default=0.0, metadata={"help": "CutMix alpha (timm's --cutmix, e.g. 1.0): paste a patch of one film into another, labels by area; 0 turns it off."})
    random_erasing: float = field(default=0.0, metadata={"help": "Probability of erasing a random rectangle of each training image with noise (timm's --reprob, --remode pixel); 0 turns it off."})
    dataloader_num_workers: int = field(default=2, metadata={"help": "Worker processes decoding images (into the film cache, or every epoch with --no_film_cache)."})
    film_cache: bool = field(default=True, metadata={"help": "Decode the films once into a memory-mapped cache at the input size and augment whole batches (kornia); --no_film_cache decodes and augments film by film every epoch."})
    film_cache_dir: Optional[str] = field(default=None, metadata={"help": "Where the film cache lives; default: PNEUMO_CACHE_DIR, else ~/.cache/pneumo_hf/films."})
    seed: int = field(default=42, metadata={"help": "Seed for the init, the augmentation and the data order."})
    split_seed: Optional[int] = field(default=None, metadata={"help": "Seed of the patient-grouped validation split; default: --seed. Fix it to compare seeds on one split."})
    checkpointing_steps: Optional[str] = field(default="epoch", metadata={"help": "Save a resumable checkpoint every N optimizer steps, or 'epoch'."})
    checkpoints_total_limit: int = field(default=2, metadata={"help": "Keep only this many newest checkpoints."})
    resume_from_checkpoint: Optional[str] = field(default=None, metadata={"help": "A checkpoint folder, or 'latest'."})
    early_stopping_patience: Optional[int] = field(default=None, metadata={"help": "Stop after this many epochs without a better validation ROC-AUC."})
    test_time_views: list[str] = field(default_factory=list, metadata={"help": f"Test-time views ({', '.join(VIEWS)}) whose mean logits the stored temperature and threshold are fitted on and inference uses."})
    min_sensitivity: float = field(default=0.95, metadata={"help": "The stored threshold is the most specific one keeping this sensitivity on validation."})
    save_fp16: bool = field(default=False, metadata={"help": "Store the weights in fp16 (half the size) if the validation PNEUMONIA probabilities stay within --fp16_tolerance of fp32; else keep fp32 and warn."})
    fp16_tolerance: float = field(default=1e-3, metadata={"help": "Largest change of a validation probability that --save_fp16 accepts."})
    with_tracking: bool = field(default=False, metadata={"help": "Log metrics through Accelerate's trackers."})
    report_to: str = field(default="tensorboard", metadata={"help": "Tracker for --with_tracking (tensorboard, wandb, all)."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the model folder to --hub_model_id at the end."})
    hub_model_id: Optional[str] = field(default=None, metadata={"help": "ORG/NAME of the Hub model repo."})
    hub_token: Optional[str] = field(default=None, metadata={"help": "Hub token; default: HF_TOKEN or the login cache."})

    def __post_init__(self):
        if not (self.dataset_name or self.train_dir):
            raise ValueError("Pass --dataset_name (Hub id or local copy) or --train_dir (image folder with NORMAL/ and PNEUMONIA/).")
        if self.dataset_name and self.train_dir:
            raise ValueError("Pass only one of --dataset_name and --train_dir.")
        if self.loss not in LOSSES:
            raise ValueError(f"--loss {self.loss!r}: choose one of {LOSSES}.")
        if self.checkpointing_steps not in (None, "epoch") and not str(self.checkpointing_steps).isdigit():
            raise ValueError(f"--checkpointing_steps {self.checkpointing_steps!r}: give a number of steps or 'epoch'.")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id ORG/NAME.")
        if self.model_ema_decay is not None and not 0.0 < self.model_ema_decay < 1.0:
            raise ValueError(f"--model_ema_decay {self.model_ema_decay}: give a value between 0 and 1, e.g. 0.999.")
        unknown_views = sorted(set(self.test_time_views) - set(VIEWS))
        if unknown_views:
            raise ValueError(f"--test_time_views {unknown_views}: choose from {sorted(VIEWS)}.")
        if (self.mixup or self.cutmix) and self.loss == "focal":
            raise ValueError("--mixup and --cutmix train on blended labels, which --loss focal does not take; use --loss weighted_ce.")
        if min(self.mixup, self.cutmix, self.intensity_aug) < 0:
            raise ValueError("--mixup, --cutmix and --intensity_aug take 0 (off) or a positive value.")
        if not 0.0 <= self.random_erasing <= 1.0:
            raise ValueError(f"--random_erasing {self.random_erasing}: give a probability between 0 and 1, e.g. 0.25.")
        if self.freeze_backbone_epochs < 0:
            raise ValueError(f"--freeze_backbone_epochs {self.freeze_backbone_epochs}: give 0 (off) or a number of epochs.")
        if self.linear_probe_c <= 0:
            raise ValueError(f"--linear_probe_c {self.linear_probe_c}: give a positive value, e.g. 0.003.")
        if self.num_train_epochs == 0 and not self.linear_probe:
            raise ValueError("--num_train_epochs 0 trains nothing; give a number of epochs, or add --linear_probe to fit the head alone.")
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"--layer_decay {self.layer_decay}: give a factor in (0, 1], e.g. 0.75.")
        if not 0.5 <= self.min_sensitivity <= 1.0:
            raise ValueError(f"--min_sensitivity {self.min_sensitivity}: give a value between 0.5 and 1.")
        output = Path(self.output_dir)
        try:
            output.mkdir(parents=True, exist_ok=True)
            (output / ".write_test").touch()
            (output / ".write_test").unlink()
        except OSError as error:
            raise ValueError(f"--output_dir {self.output_dir} is not writable ({error.strerror}); choose another folder.") from error


def make_loss(kind: str, weights: torch.Tensor, label_smoothing: float = 0.0, gamma: float = 2.0):
    """The training loss: class-weighted cross-entropy, plain cross-entropy, or class-weighted focal loss."""
    if kind == "ce":
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    if kind == "weighted_ce":
        return nn.CrossEntropyLoss(weight=weights, label_smoothing=label_smoothing)

    def focal(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weighted = F.cross_entropy(logits, labels, weight=weights.to(logits.device), reduction="none", label_smoothing=label_smoothing)
        p_true = torch.exp(-F.cross_entropy(logits, labels, reduction="none"))
        return ((1.0 - p_true) ** gamma * weighted).mean()

    return focal


@torch.no_grad()
def evaluate(model: nn.Module, loader, accelerator: Accelerator, views: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Logits (averaged over test-time `views`, see `pneumo_hf.tta`) and labels of every image once,
    across all processes (`gather_for_metrics`)."""
    model.eval()
    all_logits, all_labels, skipped = [], [], 0
    for batch in loader:
        skipped += int(batch["n_skipped"])
        logits = logits_with_views(model, batch["pixel_values"], views)
        logits, labels = accelerator.gather_for_metrics((logits, batch["labels"]))
        all_logits.append(logits.cpu().numpy())
        all_labels.append(labels.cpu().numpy())
    if skipped:
        logger.warning("%d unreadable evaluation images skipped.", skipped)
    return np.concatenate(all_logits), np.concatenate(all_labels)


def score_split(classifier: PneumoniaClassifier, batches, accelerator: Optional[Accelerator] = None, views: Optional[Sequence[str]] = None) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated PNEUMONIA probabilities and labels of a split, as `load_predictor()` scores each film: the model's
    stored test-time views (unless `views` are given) and temperature. `batches`: a loader of `XrayDataset`
    batches, or any iterable of such batches (train/experiments/occlusion.py greys them first). The one scoring used by
    `pneumo-hf evaluate`, train/experiments/compare.py and train/experiments/occlusion.py."""
    views = classifier.test_time_views if views is None else views
    logits, labels = evaluate(classifier, batches, accelerator or Accelerator(), views)
    return metrics.probabilities(logits, classifier.temperature)[:, 1], labels


def split_loader(classifier: PneumoniaClassifier, dataset: datasets.Dataset, batch_size: int = 64):
    """A loader of `dataset` through the model's own preprocessing, for `score_split`."""
    return torch.utils.data.DataLoader(XrayDataset(dataset, build_transform(classifier.data_config)), batch_size=batch_size, collate_fn=collate)


def _loaders(args: TrainingArguments, classifier: PneumoniaClassifier, train_set, validation_set):
    """The training and validation loaders, and the batch augmentation that goes with the first (None when the loader
    augments film by film): over the film cache by default, else decoding JPEGs in workers every epoch."""
    loader_kwargs = {"collate_fn": collate, "num_workers": args.dataloader_num_workers, "persistent_workers": args.dataloader_num_workers > 0}
    if args.film_cache:
        train_films, validation_films = (
            cached_films(split, classifier.data_config, args.film_cache_dir, train=train, num_workers=args.dataloader_num_workers)
            for split, train in ((train_set, True), (validation_set, False))
        )
        augment = BatchAugment(classifier.data_config, args.aug_strength, args.intensity_aug, args.random_erasing)
        train_loader = torch.utils.data.DataLoader(train_films, batch_size=args.per_device_train_batch_size, shuffle=True, collate_fn=collate)  # slicing a memmap needs no workers
        return train_loader, torch.utils.data.DataLoader(validation_films, batch_size=args.per_device_eval_batch_size, collate_fn=collate), augment
    train_loader = torch.utils.data.DataLoader(
        XrayDataset(train_set, build_transform(classifier.data_config, train=True, aug_strength=args.aug_strength, random_erasing=args.random_erasing, intensity_aug=args.intensity_aug)),
        batch_size=args.per_device_train_batch_size, shuffle=True, **loader_kwargs,
    )
    validation_loader = torch.utils.data.DataLoader(
        XrayDataset(validation_set, build_transform(classifier.data_config)), batch_size=args.per_device_eval_batch_size, **loader_kwargs
    )
    return train_loader, validation_loader, None


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


def split_seed(run: dict[str, Any]) -> int:
    """The seed that drew a run's validation split: --split_seed, else --seed (its training_args.json as a dict)."""
    return run["seed"] if run.get("split_seed") is None else run["split_seed"]


def run_splits(run: dict[str, Any]) -> tuple[datasets.Dataset, datasets.Dataset]:
    """The (train, validation) splits of a run, from its arguments as a dict (its training_args.json)."""
    return load_splits(run["dataset_name"], run["train_dir"], run["validation_dir"], run["validation_fraction"], split_seed(run), run["max_train_samples"])


def validation_split_of(folder: Path) -> datasets.Dataset:
    """The validation split of the run that wrote model folder `folder`, rebuilt from its training_args.json."""
    recorded = Path(folder) / "training_args.json"
    if not recorded.is_file():
        raise DataError(f"{folder} has no training_args.json to rebuild its validation split from; pass `data_dir` or `dataset_name`.")
    return run_splits(json.loads(recorded.read_text()))[1]


def train(args: TrainingArguments, command: str = "") -> dict[str, Any]:
    """Run the whole training and write the model folder to `args.output_dir`; returns all_results."""
    output_dir = Path(args.output_dir)
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
    probe_started = time.time()
    if args.linear_probe and not args.resume_from_checkpoint:  # a resumed run's head comes from its checkpoint
        _fit_linear_probe(args, classifier, train_set)
    probe_seconds = time.time() - probe_started
    train_loader, validation_loader, augment = _loaders(args, classifier, train_set, validation_set)
    optimizer = torch.optim.AdamW(_parameter_groups(classifier, args), lr=args.learning_rate, weight_decay=args.weight_decay)
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
    logits, labels = evaluate(validated, run.validation_loader, accelerator)
    row = _epoch_summary(epoch, train_loss, logits, labels)
    state.history.append(row)
    accelerator.print(f"epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "epoch"))
    if args.with_tracking:
        accelerator.log(row, step=state.completed_steps)
    improved = row["validation_roc_auc"] > state.best_roc_auc
    state.best_roc_auc = max(state.best_roc_auc, row["validation_roc_auc"])
    state.epochs_without_improvement = 0 if improved else state.epochs_without_improvement + 1
    if improved and accelerator.is_main_process:
        accelerator.unwrap_model(validated).save_pretrained(Path(args.output_dir) / "best_model")


def _parameter_groups(classifier: PneumoniaClassifier, args: TrainingArguments) -> list:
    """All parameters in one group, or with --layer_decay timm's layer-wise groups, their learning rates scaled
    (get_cosine_schedule_with_warmup then scales each group's own rate)."""
    if args.layer_decay is None:
        return [{"params": list(classifier.parameters())}]
    groups = param_groups_layer_decay(classifier.backbone, weight_decay=args.weight_decay, layer_decay=args.layer_decay)
    for group in groups:
        group["lr"] = args.learning_rate * group["lr_scale"]
    logger.info("Layer decay %g: %d parameter groups, learning-rate scales %.3g to %.3g.", args.layer_decay, len(groups), min(g["lr_scale"] for g in groups), max(g["lr_scale"] for g in groups))
    return groups


def _freeze_backbone(classifier: PneumoniaClassifier, frozen: bool) -> None:
    """With `frozen`, only the head has gradients and the rest is in eval mode (BatchNorm statistics and weights stay
    the checkpoint's, bit for bit); else every parameter trains. Called after `model.train()`."""
    head = head_of(classifier)
    head_parameters = {id(parameter) for parameter in head.parameters()}
    for parameter in classifier.parameters():
        parameter.requires_grad_(not frozen or id(parameter) in head_parameters)
    if frozen:
        classifier.backbone.eval()
        head.train()


def _train_one_epoch(run: _Run, epoch: int, progress) -> float:
    """One pass over the training data from where the run's state says it stopped; returns the mean loss."""
    args, accelerator, model, ema, state, loader = run.args, run.accelerator, run.model, run.ema, run.state, run.train_loader
    criterion, optimizer, scheduler = run.criterion, run.optimizer, run.scheduler
    model.train()
    if args.freeze_backbone_epochs:
        frozen = epoch < args.freeze_backbone_epochs
        _freeze_backbone(run.classifier, frozen)
        if epoch == args.freeze_backbone_epochs:
            logger.info("Epoch %d: the backbone is unfrozen; everything trains from now on.", epoch)
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
        found = sorted((output_dir / "checkpoints").glob("checkpoint_*"), key=lambda p: int(p.name.split("_")[-1]))
        if not found:
            raise ValueError(f"--resume_from_checkpoint latest: no checkpoint in {output_dir / 'checkpoints'}; start without the flag.")
        checkpoint = str(found[-1])
    path = Path(checkpoint)
    if not (path / "trainer_state.json").is_file():
        raise ValueError(f"--resume_from_checkpoint {checkpoint}: not a checkpoint folder of this trainer (no trainer_state.json).")
    accelerator.load_state(str(path))
    number = re.search(r"(\d+)$", path.name)
    accelerator.project_configuration.iteration = int(number.group(1)) + 1 if number else 0
    state = _State(**json.loads((path / "trainer_state.json").read_text()))
    logger.info("Resumed from %s: epoch %d, batch %d, step %d.", path, state.epoch, state.batches_done, state.completed_steps)
    return state


def _fit_domain_check(run: _Run, output_dir: Path) -> None:
    """The domain check (pneumo_hf.domain) fitted on the training films, its cut calibrated so that at most 5 % of
    the validation split is flagged (train/fit_domain_check.py recalibrates it on other films)."""

    def batches(dataset: datasets.Dataset) -> list[torch.Tensor]:
        if run.args.film_cache:  # the same pixels as the JPEGs give, without decoding them again
            films = cached_films(dataset, run.classifier.data_config, run.args.film_cache_dir, num_workers=run.args.dataloader_num_workers)
            loader = torch.utils.data.DataLoader(films, batch_size=64, collate_fn=collate)
        else:
            loader = split_loader(run.classifier, dataset)
        return [batch["pixel_values"] for batch in loader if len(batch["pixel_values"])]

    check = fit_domain_check(run.classifier, batches(run.train_set), batches(run.validation_set), calibration_name="the run's validation split")
    check.save(output_dir)
    logger.info("Domain check fitted on %d training films; %.1f %% of validation flagged.", check.info["train_films"], 100 * check.info["calibration_flagged"])


def _test_dev_figures(classifier: PneumoniaClassifier, logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """The figures of --test_dev_dir from the stored weights' logits, at the fitted temperature and threshold:
    what `pneumo-hf evaluate` (score_split) measures on the saved folder."""
    scores = metrics.probabilities(logits, classifier.temperature)[:, 1]
    found = metrics.classification_metrics(labels, scores, classifier.threshold)
    logger.info("test_dev: ROC-AUC %.4f, accuracy %.4f, sensitivity %.4f, specificity %.4f (%d films).", found["roc_auc"], found["accuracy"], found["recall"], found["specificity"], found["n"])
    return found


def _choose_storage(args: TrainingArguments, scores: np.ndarray, fp16_logits: Optional[np.ndarray], temperature: float) -> tuple[dict[str, Any], np.ndarray]:
    """fp16 when --save_fp16 and no validation probability moves by more than --fp16_tolerance, else fp32;
    and the validation scores of the weights so stored."""
    if fp16_logits is None:
        return {"dtype": "float32", "fp16_max_change": None}, scores
    fp16_scores = metrics.probabilities(fp16_logits, temperature)[:, 1]
    change = float(np.abs(fp16_scores - scores).max())
    if change > args.fp16_tolerance:
        logger.warning("fp16 weights move a validation probability by %.4f, over --fp16_tolerance %g: the weights are stored in fp32.", change, args.fp16_tolerance)
        return {"dtype": "float32", "fp16_max_change": change}, scores
    logger.info("Weights stored in fp16: validation probabilities within %.5f of fp32.", change)
    return {"dtype": "float16", "fp16_max_change": change}, fp16_scores


def _finish(run: _Run) -> dict[str, Any]:
    """Best weights back, temperature and threshold fitted on validation (with the test-time views),
    then the model folder (fp16 with --save_fp16, if within tolerance). A finished run's folder is rewritten by
    resuming it with new --test_time_views or --save_fp16."""
    args, accelerator, classifier, validation_loader, state = run.args, run.accelerator, run.classifier, run.validation_loader, run.state
    command, n_train, weights = run.command, len(run.train_set), run.weights
    output_dir = Path(args.output_dir)
    best = PneumoniaClassifier.from_pretrained(output_dir / "best_model")
    accelerator.unwrap_model(classifier).load_state_dict(best.state_dict())
    candidates = {"float32": classifier, **({"float16": classifier.fp16_rounded()} if args.save_fp16 else {})}
    logits, labels = evaluate(classifier, validation_loader, accelerator, args.test_time_views)
    fp16_logits = evaluate(candidates["float16"], validation_loader, accelerator, args.test_time_views)[0] if args.save_fp16 else None
    test_dev = {dtype: evaluate(model, run.test_dev_loader, accelerator, args.test_time_views) for dtype, model in candidates.items()} if run.test_dev_loader else {}
    if not accelerator.is_main_process:
        return {}
    classifier.test_time_views = tuple(args.test_time_views)
    classifier.temperature = metrics.fit_temperature(logits, labels)
    scores = metrics.probabilities(logits, classifier.temperature)[:, 1]
    classifier.threshold = metrics.choose_threshold(labels, scores, args.min_sensitivity)
    storage, scores = _choose_storage(args, scores, fp16_logits, classifier.temperature)  # the figures are the stored weights'
    found = metrics.classification_metrics(labels, scores, classifier.threshold)
    test_dev_found = _test_dev_figures(classifier, *test_dev[storage["dtype"]]) if test_dev else None
    classifier.save_pretrained(output_dir, half=storage["dtype"] == "float16")
    _fit_domain_check(run, output_dir)
    metrics.plot_split(labels, scores, classifier.threshold, output_dir, "validation", "Validation split")
    if test_dev:
        test_logits, test_labels = test_dev[storage["dtype"]]
        metrics.plot_split(test_labels, metrics.probabilities(test_logits, classifier.temperature)[:, 1], classifier.threshold, output_dir, "test_dev", "Official test split, half A")
    metrics.plot_history(state.history, output_dir / "training_curves.png")
    results = {
        **{f"test_dev_{k}": v for k, v in (test_dev_found or {}).items()},
        **{f"validation_{k}": v for k, v in found.items()},
        "temperature": classifier.temperature,
        "epochs_run": state.epoch,
        "train_images": n_train,
        "skipped_images": state.skipped_images,
        "train_seconds": state.train_seconds,
        "trained_from_scratch": classifier.trained_from_scratch,
        **({"base_model": classifier.base_model, "base_model_revision": classifier.base_model_revision} if classifier.base_model else {}),
        "weights_dtype": storage["dtype"],
    }
    if storage["fp16_max_change"] is not None:
        results["fp16_max_probability_change"] = storage["fp16_max_change"]
    (output_dir / "all_results.json").write_text(json.dumps(results, indent=2))
    (output_dir / "training_args.json").write_text(json.dumps(asdict(args), indent=2))
    summary = {
        "model_id": args.hub_model_id,
        "family": classifier.family,
        "architecture": classifier.architecture,
        "trained_from_scratch": classifier.trained_from_scratch,
        "base_model": classifier.base_model,
        "base_model_revision": classifier.base_model_revision,
        "weights_source": classifier.weights_source,
        "linear_probe_c": args.linear_probe_c if args.linear_probe else None,
        "threshold_rule": f"the most specific threshold that keeps validation sensitivity ≥ {args.min_sensitivity}",
        "temperature": classifier.temperature,
        "test_time_views": list(classifier.test_time_views),
        "storage": storage,
        "input_size": list(classifier.data_config["input_size"]),
        "mean": list(classifier.data_config["mean"]),
        "std": list(classifier.data_config["std"]),
        "loss": args.loss,
        "class_weights": [round(w, 3) for w in weights.tolist()],
        "epochs_run": state.epoch,
        "train_images": n_train,
        "train_seconds": state.train_seconds,
        "command": command,
    }
    (output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    write_model_card(output_dir, args.hub_model_id)
    logger.info("Model folder written to %s (validation ROC-AUC %.4f, threshold %.4f).", output_dir, found["roc_auc"], classifier.threshold)
    if args.push_to_hub:
        push_folder(output_dir, args.hub_model_id, args.hub_token)
    return results
