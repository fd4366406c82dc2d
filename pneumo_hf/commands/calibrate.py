"""`pneumo-hf calibrate`: refit a model folder's calibration (Platt's slope and intercept, or `--method temperature`) and
threshold on a site's labelled films (pneumo_hf.calibration).

    pneumo-hf calibrate --model pneumo_hf/default_model --data_dir our_films/ --min_sensitivity 0.95 --output_dir runs/ours
"""

import argparse
import logging
from collections.abc import Sequence
from typing import Optional

from pneumo_hf.calibration import METHODS, calibrate_folder
from pneumo_hf.errors import UserError


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Calibrate, print the figures before, after and cross-fitted; 1 with one log line on bad input."""
    parser = argparse.ArgumentParser(prog="pneumo-hf calibrate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Model folder or Hub repo id.")
    parser.add_argument("--data_dir", required=True, help="The site's labelled films: an image folder with NORMAL/ and PNEUMONIA/.")
    parser.add_argument("--min_sensitivity", type=float, default=0.95, help="The new threshold is the most specific one keeping this sensitivity on the films.")
    parser.add_argument("--output_dir", required=True, help="A new folder for the calibrated copy of the model.")
    parser.add_argument("--repeats", type=int, default=10, help="Patient-grouped halvings for the cross-fitted estimate.")
    parser.add_argument("--method", choices=METHODS, default="platt", help="platt: slope and intercept on the logit (default); temperature: the temperature alone.")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    try:
        report = calibrate_folder(args.model, args.data_dir, args.min_sensitivity, args.output_dir, args.repeats, args.method)
    except UserError as error:
        logging.getLogger("calibrate").error("%s", error)
        return 1
    print(f"{report['films']} films of {report['data']}; sensitivity ≥ {args.min_sensitivity}")
    print(f"{'':<34}{'temperature':>12}{'intercept':>10}{'threshold':>10}{'accuracy':>10}{'sensitivity':>12}{'specificity':>12}{'ECE':>7}{'ECE P(PN)':>10}")
    rows = [("stored, on all the films", report["before"]), ("refit, on the same films", report["after"])]
    rows += [(f"{name}, cross-fitted ({figures['halves']} halves)", figures) for name, figures in report["crossfit"].items()]
    for name, figures in rows:
        head = f"{figures['temperature']:>12.3f}{figures['intercept']:>10.3f}{figures['threshold']:>10.3f}" if "temperature" in figures else " " * 32
        print(f"{name:<34}{head}{figures['accuracy']:>10.3f}{figures['sensitivity']:>12.3f}{figures['specificity']:>12.3f}{figures['ece']:>7.3f}{figures['ece_pneumonia']:>10.3f}")
    print(f"wrote {args.output_dir}")
    return 0
