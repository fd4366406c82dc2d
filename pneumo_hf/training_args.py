"""The flags of `train/train.py` (and `pneumo-hf train`), as one dataclass: names after transformers'
run_image_classification_no_trainer.py, each checked in `__post_init__` with a message that names the flag.

    python train/train.py --help
    python train/train.py train/recipes/tf_efficientnet_lite0_linear_probe.json     # the same flags as one JSON file
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .errors import ArgumentError
from .tta import VIEWS

__all__ = ["LOSSES", "TrainingArguments"]

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
    trainable_layers: Optional[int] = field(default=None, metadata={"help": "Train only the top N layers of a timm model's layer grouping (as --layer_decay numbers them; the head's layer is the top one); the layers below keep the checkpoint's weights, and every batch norm its statistics. Gentle LP-FT: --linear_probe --trainable_layers 4."})
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
            raise ArgumentError("Pass --dataset_name (Hub id or local copy) or --train_dir (image folder with NORMAL/ and PNEUMONIA/).")
        if self.dataset_name and self.train_dir:
            raise ArgumentError("Pass only one of --dataset_name and --train_dir.")
        if self.loss not in LOSSES:
            raise ArgumentError(f"--loss {self.loss!r}: choose one of {LOSSES}.")
        if self.checkpointing_steps not in (None, "epoch") and not str(self.checkpointing_steps).isdigit():
            raise ArgumentError(f"--checkpointing_steps {self.checkpointing_steps!r}: give a number of steps or 'epoch'.")
        if self.push_to_hub and not self.hub_model_id:
            raise ArgumentError("--push_to_hub needs --hub_model_id ORG/NAME.")
        if self.model_ema_decay is not None and not 0.0 < self.model_ema_decay < 1.0:
            raise ArgumentError(f"--model_ema_decay {self.model_ema_decay}: give a value between 0 and 1, e.g. 0.999.")
        unknown_views = sorted(set(self.test_time_views) - set(VIEWS))
        if unknown_views:
            raise ArgumentError(f"--test_time_views {unknown_views}: choose from {sorted(VIEWS)}.")
        if (self.mixup or self.cutmix) and self.loss == "focal":
            raise ArgumentError("--mixup and --cutmix train on blended labels, which --loss focal does not take; use --loss weighted_ce.")
        if min(self.mixup, self.cutmix, self.intensity_aug) < 0:
            raise ArgumentError("--mixup, --cutmix and --intensity_aug take 0 (off) or a positive value.")
        if not 0.0 <= self.random_erasing <= 1.0:
            raise ArgumentError(f"--random_erasing {self.random_erasing}: give a probability between 0 and 1, e.g. 0.25.")
        if self.freeze_backbone_epochs < 0:
            raise ArgumentError(f"--freeze_backbone_epochs {self.freeze_backbone_epochs}: give 0 (off) or a number of epochs.")
        if self.trainable_layers is not None and self.trainable_layers < 1:
            raise ArgumentError(f"--trainable_layers {self.trainable_layers}: give a number of layers from the top, at least 1 (the head).")
        if self.linear_probe_c <= 0:
            raise ArgumentError(f"--linear_probe_c {self.linear_probe_c}: give a positive value, e.g. 0.003.")
        if self.num_train_epochs == 0 and not self.linear_probe:
            raise ArgumentError("--num_train_epochs 0 trains nothing; give a number of epochs, or add --linear_probe to fit the head alone.")
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise ArgumentError(f"--layer_decay {self.layer_decay}: give a factor in (0, 1], e.g. 0.75.")
        if not 0.5 <= self.min_sensitivity <= 1.0:
            raise ArgumentError(f"--min_sensitivity {self.min_sensitivity}: give a value between 0.5 and 1.")
