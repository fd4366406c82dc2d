"""`pneumo-hf train`: fine-tune or train a pneumonia classifier; writes a model folder the app, timm and transformers read.

    pneumo-hf train --model_name_or_path efficientnet_b0 \
        --train_dir ../shared/data/chest_xray_224/train --output_dir runs/b0 --num_train_epochs 1
    accelerate launch train/train.py --dataset_name hf-vision/chest-xray-pneumonia --output_dir runs/b0 ...
    python train/train.py args.json          # the same flags as one JSON file
"""

import logging
import os
import shlex
import sys
from collections.abc import Sequence
from typing import Optional

from transformers import HfArgumentParser

from pneumo_hf.commands import as_flags
from pneumo_hf.errors import UserError
from pneumo_hf.training import TrainingArguments, train


def main(argv: Optional[Sequence[str]] = None, program: Optional[str] = None) -> int:
    """Parse the flags (or one JSON file of them), train, write the model folder; 1 with one log line on bad input."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for chatty in ("accelerate", "timm"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    parser = HfArgumentParser(TrainingArguments, prog=program or "train/train.py")
    logger = logging.getLogger("train")
    try:  # HfArgumentParser says what is wrong with a JSON file of flags by ValueError
        if len(argv) == 1 and argv[0].endswith(".json"):
            (args,) = parser.parse_json_file(argv[0])
        else:
            (args,) = parser.parse_args_into_dataclasses(args=argv)
    except (ValueError, OSError) as error:
        logger.error("%s", as_flags(str(error)))
        return 1
    launcher = "accelerate launch" if "ACCELERATE_USE_CPU" in os.environ or "LOCAL_RANK" in os.environ else "python"
    try:  # the user's errors (a bad folder, model name or Hub push) in one line; a bug keeps its traceback
        train(args, command=f"{launcher} {program or 'train/train.py'} " + shlex.join(argv))
    except UserError as error:
        logger.error("%s", as_flags(str(error)))
        return 1
    return 0
