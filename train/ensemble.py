"""Join trained model folders into one ensemble model folder: `pneumo-hf ensemble` from a clone (pneumo_hf.assembly).

    python train/ensemble.py runs/b0 runs/keras_cnn --output_dir runs/ensemble --test_dev_dir ../shared/data/chest_xray_224/test_dev
"""

import sys

from pneumo_hf.commands.ensemble import main

if __name__ == "__main__":
    sys.exit(main(program="python train/ensemble.py"))
