"""`pneumo-hf ensemble`: join trained model folders into one ensemble model folder (pneumo_hf.assembly).

    pneumo-hf ensemble runs/b0 runs/keras_cnn --output_dir runs/ensemble \
        --test_dev_dir ../shared/data/chest_xray_224/test_dev [--hub_model_id ORG/NAME --push_to_hub]
    pneumo-hf ensemble "runs/ensemble#members.0" runs/r18 --output_dir runs/other   # one member of an ensemble folder

The members must be timm CNNs validated on one split; the ensemble's temperature and threshold are fitted on that
validation split; its domain check is the first member's (fit it first with `pneumo-hf fit-domain-check`).
"""

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Optional

from pneumo_hf.tta import VIEWS

logger = logging.getLogger("pneumo_hf.ensemble")


def main(argv: Optional[Sequence[str]] = None, program: str = "pneumo-hf ensemble") -> int:
    """Build the ensemble; 1 with one log line on bad input or a failed push."""
    from pneumo_hf.assembly import assemble
    from pneumo_hf.errors import UserError
    from pneumo_hf.hub import push_folder

    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("pneumo_hf.assembly").setLevel(logging.INFO)  # what each member's fp16 rounding moves
    parser = argparse.ArgumentParser(prog=program, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("members", nargs="+", help="Model folders (or Hub ids) written by training; FOLDER#members.I takes one member of an ensemble folder.")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--test_time_views", nargs="*", choices=sorted(VIEWS), help="Default: the first member's.")
    parser.add_argument("--min_sensitivity", type=float, help="Threshold rule on validation; default: the first member's.")
    parser.add_argument("--test_dev_dir", help="Films never trained on (official test split, half A): their figures lead the card.")
    parser.add_argument("--save_fp16", action="store_true", help="Store in fp16 each member whose rounding keeps every validation probability within --fp16_tolerance of fp32; the others stay fp32.")
    parser.add_argument("--fp16_tolerance", type=float, default=1e-3, help="Largest change of a validation probability that --save_fp16 accepts.")
    parser.add_argument("--hub_model_id", help="ORG/NAME: the card's name, and where --push_to_hub uploads the folder.")
    parser.add_argument("--push_to_hub", action="store_true", help="Upload the ensemble folder to --hub_model_id at the end.")
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(arguments)
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id ORG/NAME.")
    try:
        found = assemble(
            args.members, args.output_dir, args.test_time_views, args.min_sensitivity, args.test_dev_dir, args.save_fp16, args.fp16_tolerance, args.hub_model_id,
            program=program, arguments=arguments,
        )
        print(f"wrote {args.output_dir}: validation ROC-AUC {found.validation['roc_auc']:.4f}, threshold {found.validation['threshold']:.4f}"
              + (f"; test_dev ROC-AUC {found.test_dev['roc_auc']:.4f}, accuracy {found.test_dev['accuracy']:.4f}" if found.test_dev else ""))
        if args.push_to_hub:
            push_folder(args.output_dir, args.hub_model_id)  # token from HF_TOKEN or the login cache
    except UserError as error:
        logger.error("%s", error)
        return 1
    return 0
