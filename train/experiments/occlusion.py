"""Does a model lean on the image's borders? Its validation split scored again with a strip of each
side greyed out (the normalised mean): ROC-AUC, mean change of the PNEUMONIA probability and the
decisions that change at the stored threshold, each way. A shortcut through markers or collimation
edges shows up as a large drop.

    python train/experiments/occlusion.py --model pneumo_hf/default_model --fraction 0.12
"""

import argparse
import logging
import sys

import numpy as np

from pneumo_hf import metrics
from pneumo_hf.commands import as_flags
from pneumo_hf.data import DataError
from pneumo_hf.evaluation import score_split, split_loader, validation_split_of
from pneumo_hf.models import ModelError, PneumoniaClassifier, resolve_model_folder

logger = logging.getLogger("occlusion")

SIDES = ("none", "left", "right", "top", "bottom")


def greyed(loader, side: str, fraction: float):
    """The loader's batches with a `fraction` of the image on `side` set to 0 (the mean after normalisation)."""
    for batch in loader:
        if side == "none":
            yield batch
            continue
        pixels = batch["pixel_values"].clone()
        height, width = pixels.shape[-2:]
        strip = {
            "left": np.s_[..., : round(fraction * width)],
            "right": np.s_[..., width - round(fraction * width) :],
            "top": np.s_[..., : round(fraction * height), :],
            "bottom": np.s_[..., height - round(fraction * height) :, :],
        }[side]
        pixels[strip] = 0.0
        yield {**batch, "pixel_values": pixels}


def run(model: str, fraction: float) -> list[dict]:
    folder = resolve_model_folder(model)
    classifier = PneumoniaClassifier.from_pretrained(folder).eval()
    loader = split_loader(classifier, validation_split_of(folder))
    rows, reference = [], None
    for side in SIDES:
        scores, labels = score_split(classifier, greyed(loader, side, fraction))
        reference = scores if reference is None else reference
        positive, was_positive = scores >= classifier.threshold, reference >= classifier.threshold
        rows.append({
            "side": side,
            "roc_auc": metrics.classification_metrics(labels, scores, classifier.threshold)["roc_auc"],
            "mean_change": float(np.abs(scores - reference).mean()),
            "to_pneumonia": int((positive & ~was_positive).sum()),
            "to_normal": int((~positive & was_positive).sum()),
            "n": len(labels),
        })
    return rows


def main(argv=None) -> int:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Model folder or Hub repo id written by train/train.py.")
    parser.add_argument("--fraction", type=float, default=0.12, help="Share of the width (or height) greyed out.")
    args = parser.parse_args(argv)
    if not 0.0 < args.fraction < 0.5:
        parser.error(f"--fraction {args.fraction}: give a share between 0 and 0.5, e.g. 0.12")
    try:
        rows = run(args.model, args.fraction)
    except (DataError, ModelError) as error:
        logger.error("%s", as_flags(str(error)))
        return 1
    print(f"| greyed strip ({args.fraction:.0%}) | val ROC-AUC | mean abs. change of P(PNEUMONIA) | NORMAL → PNEUMONIA | PNEUMONIA → NORMAL |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['side']} | {row['roc_auc']:.4f} | {row['mean_change']:.4f} | {row['to_pneumonia']} of {row['n']} | {row['to_normal']} of {row['n']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
