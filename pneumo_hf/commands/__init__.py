"""The command-line programs: `pneumo-hf predict | train | evaluate`, also run as `python -m pneumo_hf ...` and, for
the last two, as `train/train.py` and `train/evaluate.py` in a clone."""

import re


def as_flags(message: str) -> str:
    """A library message, whose parameters are written `name`, with the command line's flags instead (--name)."""
    return re.sub(r"`([a-z][a-z0-9_]*)`", r"--\1", message)
