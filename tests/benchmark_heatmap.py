"""Benchmark (not a test): one prediction with its heatmap, the shipped model against a ViT-B/16 + Grad-CAM pipeline.

    python tests/benchmark_heatmap.py --image pneumo_hf/example_films/NORMAL/IM-0372-0001.jpeg --repeats 10 --rounds 4

The reference is what many pneumonia demos run: timm's `vit_base_patch16_224` (two classes, random weights: the speed
does not depend on them) with pytorch-grad-cam at `blocks[-1].norm1`, the film read and resized the same way. Both run
in this process with the same torch threads, one film at a time, in alternating blocks (`--rounds` of each, every block
`--repeats` calls after one warm-up call), so that a shared machine's changing load falls on both; prints each median
(and quartiles) over all blocks, each round's ratio, and the ratio of the medians.
"""

import argparse
import statistics
import time

import timm
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from pneumo_hf import load_predictor
from pneumo_hf.imaging import load_image
from pneumo_hf.transforms import build_transform


def timed(call, repeats: int) -> list[float]:
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times


def vit_pipeline(image_path: str):
    """predict + Grad-CAM as a ViT-B/16 demo does it."""
    model = timm.create_model("vit_base_patch16_224", num_classes=2).eval()
    transform = build_transform({"input_size": (3, 224, 224), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bicubic"})
    grid = model.patch_embed.grid_size

    def reshape(tokens):
        return tokens[:, model.num_prefix_tokens :, :].reshape(tokens.size(0), *grid, tokens.size(2)).permute(0, 3, 1, 2)

    cam = GradCAM(model=model, target_layers=[model.blocks[-1].norm1], reshape_transform=reshape)

    def run():
        pixels = transform(load_image(image_path))[None]
        heatmap = cam(input_tensor=pixels, targets=[ClassifierOutputTarget(1)])
        return cam.outputs.softmax(-1), heatmap

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", required=True)
    parser.add_argument("--repeats", type=int, default=10, help="Calls in each block.")
    parser.add_argument("--rounds", type=int, default=4, help="Blocks of each pipeline, taking turns.")
    parser.add_argument("--model", default=None, help="Model folder or Hub id (default: the shipped model).")
    args = parser.parse_args()
    predictor = load_predictor(args.model)
    pipelines = {f"pneumo-hf {predictor.name} predict(heatmap=True)": lambda: predictor.predict(args.image, heatmap=True), "ViT-B/16 + pytorch-grad-cam": vit_pipeline(args.image)}
    rows = {name: [] for name in pipelines}
    for round_index in range(args.rounds):
        blocks = {name: timed(call, args.repeats) for name, call in pipelines.items()}
        ours, vit = (statistics.median(times) for times in blocks.values())
        print(f"round {round_index + 1}: {1000 * ours:.1f} ms / {1000 * vit:.1f} ms = {ours / vit:.3f}")
        for name, times in blocks.items():
            rows[name] += times
    print(f"torch threads {torch.get_num_threads()}, {args.rounds} blocks of {args.repeats} calls each")
    for name, times in rows.items():
        q1, median, q3 = statistics.quantiles(times, n=4)
        print(f"{name:<60} median {1000 * median:7.1f} ms  (quartiles {1000 * q1:.1f}–{1000 * q3:.1f})")
    ours, vit = (statistics.median(times) for times in rows.values())
    print(f"ratio: {ours / vit:.3f} ({100 * ours / vit:.1f} % of the ViT pipeline's time)")


if __name__ == "__main__":
    main()
