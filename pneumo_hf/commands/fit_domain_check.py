"""`pneumo-hf fit-domain-check`: fit a model folder's domain check on its own training films, calibrate its cut and
print what it flags (pneumo_hf.domain_fitting).

    pneumo-hf fit-domain-check --model pneumo_hf/default_model --calibration_dir ../shared/data/chest_xray_224/test_dev \
        --pool_validation --max_flagged 0.03 --report_dir ../shared/data/adult_check
"""

import argparse
import logging
from collections.abc import Sequence
from typing import Optional


def main(argv: Optional[Sequence[str]] = None, program: str = "pneumo-hf fit-domain-check") -> int:
    """Fit and save the check, print the shares it flags; 1 with one log line on bad input."""
    from pneumo_hf.commands import as_flags
    from pneumo_hf.domain import SHRINKAGE
    from pneumo_hf.domain_fitting import fit_folder_check
    from pneumo_hf.errors import UserError

    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    parser = argparse.ArgumentParser(prog=program, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A model folder written by training (its training_args.json names its data).")
    parser.add_argument("--calibration_dir", nargs="*", default=[], help="Folders of real in-domain films the model never trained on (NORMAL/ and PNEUMONIA/).")
    parser.add_argument("--pool_validation", action="store_true", help="Calibrate on the run's validation split as well as the --calibration_dir films.")
    parser.add_argument("--crossfit_repeats", type=int, default=10, help="Patient-grouped halvings of the calibration films for the cross-fitted share.")
    parser.add_argument("--report_dir", nargs="*", default=[], help="Folders whose flagged share is printed (e.g. adult films).")
    parser.add_argument("--max_flagged", type=float, default=0.05)
    parser.add_argument("--max_train_films", type=int, help="Fit on this many training films, drawn with --seed (default: all of them).")
    parser.add_argument("--features", choices=["first_conv", "pooled"], default="first_conv", help="What the check measures: the first convolution's statistics, or the pooled embedding (for a pretrained backbone; Ledoit-Wolf covariance).")
    parser.add_argument("--grid", type=int, help="Cells a side of the grid statistics (default: the finest up to 4 within 2,048 numbers).")
    parser.add_argument("--shrinkage", type=float, default=SHRINKAGE, help="Of the covariance towards a multiple of the identity, in [0, 1].")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if (args.grid is not None and args.grid < 1) or not 0.0 <= args.shrinkage <= 1.0:
        parser.error(f"--grid {args.grid} --shrinkage {args.shrinkage}: give a grid of at least 1 and a shrinkage between 0 and 1.")
    try:
        check = fit_folder_check(
            args.model, args.calibration_dir, args.pool_validation, args.crossfit_repeats, args.report_dir, args.max_flagged, args.max_train_films,
            args.features, args.grid, args.shrinkage, args.seed,
        )
    except UserError as error:
        logging.getLogger("fit_domain_check").error("%s", as_flags(str(error)))
        return 1
    info = check.info
    measured = f"{check.grid}x{check.grid} grid" if check.grid else f"pooled embedding, shrinkage {info['shrinkage']:.4f}"
    print(f"fitted on {info['train_films']} training films, {measured}; cut {check.cut:.2f}")
    print(f"{'films':<48}{'n':>5}{'flagged':>9}")
    print(f"{'calibration: ' + info['calibration']:<48}{info['calibration_films']:>5}{info['calibration_flagged']:>9.3f}")
    if "crossfit_flagged" in info:
        shares = info["crossfit_flagged"]
        print(f"{'cross-fit: cut on one half, counted on the other':<48}{info['calibration_films'] // 2:>5}{shares['mean']:>9.3f}  (min {shares['min']:.3f}, max {shares['max']:.3f}, {shares['halves']} halves)")
    for report, found in info["reported"].items():
        print(f"{report:<48}{found['films']:>5}{found['flagged']:>9.3f}")
    print(f"written to {args.model}")
    return 0
