"""Fine-tune or train a pneumonia classifier; writes a model folder the app, timm and transformers read.

    python train/train.py --model_name_or_path efficientnet_b0 \
        --train_dir ../shared/data/chest_xray_224/train --output_dir runs/b0 --num_train_epochs 1
    accelerate launch train/train.py --dataset_name hf-vision/chest-xray-pneumonia --output_dir runs/b0 ...
    python train/train.py args.json          # the same flags as one JSON file
"""

import logging
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone without installing

from transformers import HfArgumentParser  # noqa: E402

from pneumo_hf.data import DataError  # noqa: E402
from pneumo_hf.hub import HubError  # noqa: E402
from pneumo_hf.models import ModelError  # noqa: E402
from pneumo_hf.training import TrainingArguments, train  # noqa: E402


def main() -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for chatty in ("accelerate", "timm"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    parser = HfArgumentParser(TrainingArguments)
    try:
        if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
            (args,) = parser.parse_json_file(sys.argv[1])
        else:
            (args,) = parser.parse_args_into_dataclasses()
        launcher = "accelerate launch" if "ACCELERATE_USE_CPU" in os.environ or "LOCAL_RANK" in os.environ else "python"
        train(args, command=f"{launcher} train/train.py " + shlex.join(sys.argv[1:]))
    except (ValueError, DataError, ModelError, HubError) as error:
        logging.getLogger("train").error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
