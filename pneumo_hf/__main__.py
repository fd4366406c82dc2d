"""`python -m pneumo_hf predict ...`, and `accelerate launch -m pneumo_hf predict ...` to shard over processes."""

import sys

from .cli import main

sys.exit(main())
