"""Fine-tune or train a pneumonia classifier; writes a model folder the app, timm and transformers read.

    python train/train.py --model_name_or_path efficientnet_b0 \
        --train_dir ../shared/data/chest_xray_224/train --output_dir runs/b0 --num_train_epochs 1
    accelerate launch train/train.py --dataset_name hf-vision/chest-xray-pneumonia --output_dir runs/b0 ...
    python train/train.py args.json          # the same flags as one JSON file
"""

import sys

from pneumo_hf.commands.train import main

if __name__ == "__main__":
    sys.exit(main())
