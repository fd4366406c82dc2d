"""The command-line programs: `pneumo-hf predict | train | evaluate`, also run as `python -m pneumo_hf ...` and, for
the last two, as `train/train.py` and `train/evaluate.py` in a clone."""
