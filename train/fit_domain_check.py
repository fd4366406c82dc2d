"""Fit a model folder's domain check and print what it flags: `pneumo-hf fit-domain-check` from a clone
(pneumo_hf.domain_fitting).

    python train/fit_domain_check.py --model pneumo_hf/default_model --calibration_dir ../shared/data/chest_xray_224/test_dev \
        --pool_validation --max_flagged 0.03 --report_dir ../shared/data/adult_check
"""

import sys

from pneumo_hf.commands.fit_domain_check import main

if __name__ == "__main__":
    sys.exit(main(program="python train/fit_domain_check.py"))
