"""How faithful each heatmap is to the shipped model's decision, with pytorch-grad-cam's own metrics (docs/heatmap.md):

    python train/experiments/heatmap_faithfulness.py --model pneumo_hf/default_model \
        --data_dir ../shared/data/chest_xray_224/test_dev --films 20 --figure docs/heatmaps.png

For each method, on the same films (the first --films of test_dev in name order, half of each label): ROAD (Rong et
al. 2022) removing the most relevant pixels first and the least relevant first at 10, 30, 50, 70 and 90 % (noisy
linear imputation) and their combination ((LeRF − MoRF) / 2: higher is more faithful); the confidence change when the
film is multiplied by the map (`cam_mult_image`); and the sanity check of Adebayo et al. (NeurIPS 2018): the Spearman
correlation between each film's map before and after the top layers' weights are randomised (lower: the map depends
on what the model learnt). The target is P(PNEUMONIA) of the whole model as it decides (softmax of its logits).
"""

import argparse
import copy
from pathlib import Path

import numpy as np
import torch
from pytorch_grad_cam import GradCAMPlusPlus, HiResCAM
from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirstAverage, ROADMostRelevantFirstAverage
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
from scipy.stats import spearmanr

from pneumo_hf.cam import HeatmapMaker, grad_cam_scaled
from pneumo_hf.imaging import film_files, load_image
from pneumo_hf.labels import LABEL2ID, POSITIVE_LABEL
from pneumo_hf.models import PneumoniaClassifier, resolve_model_folder
from pneumo_hf.transforms import build_transform

PERCENTILES = [10, 30, 50, 70, 90]
POSITIVE = LABEL2ID[POSITIVE_LABEL]


def probe_cam(classifier, pixels):
    """The map shipped before: the first member's class activation map of the PNEUMONIA row alone."""
    probe = classifier.backbone.members[0]
    with torch.no_grad():
        features = probe.forward_features(pixels).float()
        cams = torch.einsum("bkhw,k->bhw", features, probe.get_classifier().weight[POSITIVE].float()) / (features.shape[-2] * features.shape[-1])
    return grad_cam_scaled(cams.clamp(min=0).numpy(), pixels)


def ensemble_evidence(classifier, pixels):
    return HeatmapMaker(classifier)(pixels)[0]


def library_cam(method, layer_of):
    def run(classifier, pixels):
        with method(model=classifier, target_layers=[layer_of(classifier)]) as cam:
            return cam(input_tensor=pixels, targets=[ClassifierOutputSoftmaxTarget(POSITIVE)] * len(pixels)).astype(np.float32)
    return run


def centre_gaussian(classifier, pixels):
    """The baseline any real map must beat: a fixed Gaussian in the middle of the film."""
    height, width = pixels.shape[-2:]
    yy, xx = np.mgrid[0:height, 0:width]
    blob = np.exp(-(((yy - height / 2) / (height / 4)) ** 2 + ((xx - width / 2) / (width / 4)) ** 2) / 2).astype(np.float32)
    return np.repeat(blob[None], len(pixels), axis=0)


def blocks4(classifier):
    return classifier.backbone.members[0].blocks[4]


METHODS = {
    "probe CAM (shipped before)": probe_cam,
    "ensemble evidence: CAM + HiResCAM, weighted as the logits (shipped now)": ensemble_evidence,
    "Grad-CAM++ at Lite0 blocks[4] (14 x 14)": library_cam(GradCAMPlusPlus, blocks4),
    "HiResCAM at Lite0 blocks[4] (14 x 14)": library_cam(HiResCAM, blocks4),
    "centre Gaussian (baseline)": centre_gaussian,
}


def rank_correlation(before: np.ndarray, after: np.ndarray) -> float:
    """Spearman's r between two maps of one film; 0 where either is constant (a map the randomised model leaves
    blank shares no ranking with the learnt one), 1 where both are the same constant."""
    if np.ptp(before) == 0 or np.ptp(after) == 0:
        return 1.0 if np.array_equal(before, after) else 0.0
    return float(spearmanr(before.ravel(), after.ravel())[0])


def randomised_top(classifier: PneumoniaClassifier) -> PneumoniaClassifier:
    """A copy whose top layers hold random weights: Lite0's last stage, head convolution and head; the Keras CNNs'
    last convolution block and dense layers (Adebayo et al.'s cascading randomisation, top block)."""
    model = copy.deepcopy(classifier)
    generator = torch.Generator().manual_seed(0)
    probe, pair = model.backbone.members
    modules = [probe.blocks[-1], probe.conv_head, probe.get_classifier()]
    for keras in pair.members:
        modules += [keras.blocks[-1], keras.hidden, keras.head]
    with torch.no_grad():
        for module in modules:
            for parameter in module.parameters():
                scale = float(parameter.std()) if parameter.numel() > 1 else 1.0
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * max(scale, 1e-3))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--films", type=int, default=20)
    parser.add_argument("--figure", help="Write 8 films of the folder (per label 2 decided right, 2 wrong) under every method to this PNG.")
    parser.add_argument("--figure_only", action="store_true", help="Only the figure.")
    args = parser.parse_args()
    classifier = PneumoniaClassifier.from_pretrained(resolve_model_folder(args.model)).float().eval()
    transform = build_transform(classifier.data_config)
    films = film_files(Path(args.data_dir))
    chosen = [film for label in ("NORMAL", "PNEUMONIA") for film in [f for f in films if f.parent.name == label][: args.films // 2]]
    if args.figure:
        draw(films, transform, classifier, args.figure)
    if args.figure_only:
        return
    pixels = torch.stack([transform(load_image(film)) for film in chosen])
    targets = [ClassifierOutputSoftmaxTarget(POSITIVE)] * len(pixels)
    randomised = randomised_top(classifier)
    morf, lerf, mult = ROADMostRelevantFirstAverage(PERCENTILES), ROADLeastRelevantFirstAverage(PERCENTILES), CamMultImageConfidenceChange()
    print(f"{len(chosen)} films of {args.data_dir}; ROAD at {PERCENTILES} %")
    print(f"{'method':<74}{'MoRF':>8}{'LeRF':>8}{'ROAD':>8}{'cam×image':>10}{'rank r after randomising':>26}")
    for name, method in METHODS.items():
        maps = np.concatenate([method(classifier, pixels[i : i + 8]) for i in range(0, len(pixels), 8)])
        after = np.concatenate([method(randomised, pixels[i : i + 8]) for i in range(0, len(pixels), 8)])
        most, least = morf(pixels, maps, targets, classifier), lerf(pixels, maps, targets, classifier)
        change = mult(pixels, maps, targets, classifier)
        correlation = np.mean([rank_correlation(one, other) for one, other in zip(maps, after, strict=True)])
        print(f"{name:<74}{np.mean(most):>8.4f}{np.mean(least):>8.4f}{np.mean(least - most) / 2:>8.4f}{np.mean(change):>10.4f}{correlation:>26.3f}")


def draw(films, transform, classifier, path: str) -> None:
    """Per label, the first two films (in name order) the model decides right and the first two it decides wrong,
    under every method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pixels = torch.stack([transform(load_image(film)) for film in films])
    with torch.no_grad():
        probabilities = torch.cat([torch.softmax(classifier(pixels[i : i + 32]) / classifier.temperature, dim=1)[:, POSITIVE] for i in range(0, len(pixels), 32)]).numpy()
    decided = probabilities >= classifier.threshold
    labels = np.array([film.parent.name == POSITIVE_LABEL for film in films])
    picked = []
    for label in (False, True):
        right = [i for i in range(len(films)) if labels[i] == label and decided[i] == label]
        wrong = [i for i in range(len(films)) if labels[i] == label and decided[i] != label]
        picked += (right[:2] + wrong[:2] + right[2:])[:4]
    maps_of = {name: method(classifier, pixels[picked]) for name, method in METHODS.items()}
    picked_pixels = pixels[picked]
    figure, axes = plt.subplots(len(maps_of), len(picked), figsize=(2 * len(picked), 2.1 * len(maps_of)))
    grey = [np.asarray(load_image(films[i]).convert("L").resize(picked_pixels.shape[-2:][::-1])) for i in picked]
    for row, (name, maps) in enumerate(maps_of.items()):
        for column, i in enumerate(picked):
            axis = axes[row, column]
            axis.imshow(grey[column], cmap="gray")
            axis.imshow(maps[column], cmap="jet", alpha=0.45, vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(f"{films[i].parent.name}\nP={probabilities[i]:.2f} {'right' if decided[i] == labels[i] else 'wrong'}", fontsize=8)
            if column == 0:
                axis.set_ylabel(name.split(" (")[0].split(":")[0], fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=80)


if __name__ == "__main__":
    main()
