"""Measure a model folder (or Hub id) on a labelled split: a table on screen, JSON and PNGs on disk.

    python train/evaluate.py --model runs/b0 --data_dir path/to/test --output_json runs/b0/test.json
    python train/evaluate.py --model ORG/NAME --dataset_name hf-vision/chest-xray-pneumonia --split test
    python train/evaluate.py --model runs/b0 --validation_split --tta zoom   # the run's own validation split
"""

import sys

from pneumo_hf.commands.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
