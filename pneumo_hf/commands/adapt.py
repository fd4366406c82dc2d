"""`pneumo-hf adapt`: refit a model folder's linear-probe head, its members' votes, calibration and threshold on a site's
labelled films (pneumo_hf.adaptation), and print the site's figures before and after, cross-fitted.

    pneumo-hf adapt --model pneumo_hf/default_model --data_dir our_films/ --output_dir runs/ours \
        --train_dir ../shared/data/chest_xray_224/train
"""

import argparse
import logging
from collections.abc import Sequence
from typing import Optional

from pneumo_hf.adaptation import adapt_folder
from pneumo_hf.errors import UserError


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Adapt, print the table; 1 with one log line on bad input."""
    parser = argparse.ArgumentParser(prog="pneumo-hf adapt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Model folder or Hub repo id whose first member is a linear probe.")
    parser.add_argument("--data_dir", required=True, help="The site's labelled films: an image folder with NORMAL/ and PNEUMONIA/.")
    parser.add_argument("--output_dir", required=True, help="A new folder for the adapted copy of the model.")
    parser.add_argument("--train_dir", help="The training films the head is refit on beside the site's (an image folder).")
    parser.add_argument("--dataset_name", help="Or a Hub data set (its train split), e.g. hf-vision/chest-xray-pneumonia.")
    parser.add_argument("--site_weight", type=float, help="Each site film's weight against a training film; default: chosen by the cross-fit among 1, 3, 10, 30.")
    parser.add_argument("--min_sensitivity", type=float, default=0.95, help="The threshold keeps this sensitivity on the site's films.")
    parser.add_argument("--repeats", type=int, default=20, help="Patient-grouped halvings for the cross-fitted figures (each half held out once).")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    try:
        report = adapt_folder(args.model, args.data_dir, args.output_dir, args.train_dir, args.dataset_name, args.site_weight, args.min_sensitivity, args.repeats)
    except UserError as error:
        logging.getLogger("adapt").error("%s", error)
        return 1
    print(f"{report['films']} films of {report['patients']} patients ({report['data']}); head refit on them (weight {report['site_weight']:g}) and {report['training_films']} training films")
    print(f"{'':<44}{'accuracy':>9}{'ROC-AUC':>9}{'sensitivity':>12}{'specificity':>12}{'ECE':>7}{'ECE P(PN)':>10}")
    rows = [("stored, on all the films", report["before"])]
    rows += [(f"{name}, cross-fitted ({figures['halves']} halves)", figures) for name, figures in report["crossfit"].items()]
    rows += [(f"adapted with weight {weight}, cross-fitted", figures) for weight, figures in report["site_weights_tried"].items() if float(weight) != report["site_weight"]]
    for name, figures in rows:
        print(f"{name:<44}{figures['accuracy']:>9.3f}{figures['roc_auc']:>9.3f}{figures['sensitivity']:>12.3f}{figures['specificity']:>12.3f}{figures['ece']:>7.3f}{figures['ece_pneumonia']:>10.3f}")
    print(f"votes {', '.join(f'{name} {vote:.3f}' for name, vote in report['votes'].items())}; intercept {report['intercept']:.3f}; threshold {report['threshold']:.3f}")
    print(f"wrote {args.output_dir}")
    return 0
