"""Whether two model folders hold the same model, and the CPU kernels under which a seed gives the same weights.

    python -m pneumo_hf.reproduce runs/lite0_keras_pair pneumo_hf/default_model   # one sentence; exit 1 where not
    eval "$(python -m pneumo_hf.reproduce --exports)"                              # the kernel caps, for a shell

Floats computed outside torch (scikit-learn and numpy, whose bundled OpenBLAS picks its kernels per CPU) move in their
last digits from one CPU to another; JSON floats are compared within `FLOAT_RTOL`, tensors within one step of the
precision they are stored in (`STEPS`: one fp16 step moves no probability visibly).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

__all__ = ["FLOAT_RTOL", "KERNEL_CAPS", "STEPS", "TIMES", "first_difference", "first_digest_difference", "first_folder_difference", "first_tensor_difference", "tensor_digest"]

# Torch's kernels of an AVX2 CPU on every x86 CPU (set before torch loads): ATen's or oneDNN's instruction set alone
# changes the rounding of training (measured: docs/training.md), so a CPU with AVX-512 would otherwise train other
# weights from the same seed. OpenBLAS's Haswell kernels make numpy and scikit-learn (the linear probe's head, the
# domain check) exact across such CPUs as well (measured by the maintainers on an AVX-512 machine).
KERNEL_CAPS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2", "OPENBLAS_CORETYPE": "Haswell"}
# 1e-9 relative: far tighter than any figure a person reads, far looser than a BLAS's rounding (12th digit, measured).
FLOAT_RTOL = 1e-9
# One step of a stored precision, relative to the value (its machine epsilon); 2**-24 absolute near zero.
STEPS = {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 2.0**-23, "float64": 2.0**-52}
TENSOR_ATOL = 2.0**-24
# What a folder records of the run rather than of the model: how long it took.
TIMES = ("train_seconds",)


def first_difference(found: Any, expected: Any, where: str = "") -> Optional[str]:
    """Where `found` first differs from `expected` (JSON values: floats within FLOAT_RTOL, all else exactly), or None."""
    if isinstance(expected, float) and isinstance(found, (int, float)) and not isinstance(found, bool):
        if math.isclose(found, expected, rel_tol=FLOAT_RTOL, abs_tol=FLOAT_RTOL * 1e-3):
            return None
        return f"{where or 'the value'} is {found!r}, not {expected!r} (relative difference {abs(found - expected) / max(abs(expected), 1e-300):.1e})"
    if isinstance(expected, dict) and isinstance(found, dict):
        if sorted(found) != sorted(expected):
            return f"{where or 'the object'} has keys {sorted(set(found) ^ set(expected))} on one side only"
        for key in sorted(expected):
            difference = first_difference(found[key], expected[key], f"{where}.{key}" if where else key)
            if difference:
                return difference
        return None
    if isinstance(expected, list) and isinstance(found, list) and len(found) == len(expected):
        for index, (one, other) in enumerate(zip(found, expected, strict=True)):
            difference = first_difference(one, other, f"{where}[{index}]")
            if difference:
                return difference
        return None
    return None if found == expected else f"{where or 'the value'} is {_short(found)}, not {_short(expected)}"


def first_tensor_difference(found_file: Path, expected_file: Path) -> Optional[str]:
    """The first tensor (in name order) of one .safetensors file that differs from the other's by more than one step of
    its stored precision, with how much, or None."""
    import torch
    from safetensors.torch import load_file

    found, expected = load_file(str(found_file)), load_file(str(expected_file))
    if sorted(found) != sorted(expected):
        return f"{found_file.name} holds tensors {sorted(set(found) ^ set(expected))[:3]} on one side only"
    for name in sorted(expected):
        one, other = found[name], expected[name]
        if one.shape != other.shape:
            return f"{found_file.name}: {name} has shape {tuple(one.shape)}, not {tuple(other.shape)}"
        step = STEPS.get(str(other.dtype).removeprefix("torch."), 0.0)
        one, other = one.double(), other.double()
        gap = (one - other).abs()
        allowed = step * torch.maximum(one.abs(), other.abs()) + (TENSOR_ATOL if step else 0.0)
        if bool((gap > allowed).any()):
            over = int((gap > allowed).sum())
            return f"{found_file.name}: {name} differs in {over} of {one.numel()} entries, by up to {float(gap.max()):.3g}"
    return None


def tensor_digest(path: Path) -> dict[str, dict[str, Any]]:
    """Each tensor of a .safetensors file by its shape, dtype, L1 norm and squared L2 norm: what a pin can hold of
    tensors computed outside torch, compared by `first_digest_difference`."""
    from safetensors.numpy import load_file

    digest = {}
    for name, array in sorted(load_file(str(path)).items()):
        values = array.astype(np.float64)
        digest[name] = {"shape": list(array.shape), "dtype": str(array.dtype), "l1": float(np.abs(values).sum()), "l2_squared": float((values**2).sum())}
    return digest


def first_digest_difference(found: dict, expected: dict, where: str = "") -> Optional[str]:
    """Where two `tensor_digest`s first differ: shapes and dtypes exactly, the norms within what one step of the
    stored precision in every entry can move them (2 steps relative: the square doubles it), or None."""
    if sorted(found) != sorted(expected):
        return f"{where} holds tensors {sorted(set(found) ^ set(expected))[:3]} on one side only"
    for name, pinned in sorted(expected.items()):
        tensor = found[name]
        if (tensor["shape"], tensor["dtype"]) != (pinned["shape"], pinned["dtype"]):
            return f"{where}: {name} is {tensor['dtype']} {tensor['shape']}, not {pinned['dtype']} {pinned['shape']}"
        rtol = 2 * STEPS.get(pinned["dtype"], 0.0) + FLOAT_RTOL
        for norm in ("l1", "l2_squared"):
            if not math.isclose(tensor[norm], pinned[norm], rel_tol=rtol, abs_tol=TENSOR_ATOL):
                return f"{where}: {name}'s {norm} is {tensor[norm]!r}, not {pinned[norm]!r}"
    return None


def first_folder_difference(found: Path, expected: Path) -> Optional[str]:
    """Where model folder `found` first differs from `expected`: its weights and domain check within one fp16 step, its
    JSON files' floats within FLOAT_RTOL (times and paths of the run left out); None when they hold the same model."""
    found, expected = Path(found), Path(expected)
    for pattern in ("*.safetensors", "*.json"):
        for expected_file in sorted(expected.glob(pattern)):
            found_file = found / expected_file.name
            if not found_file.is_file():
                return f"{found} has no {expected_file.name}"
            if pattern == "*.safetensors":
                difference = first_tensor_difference(found_file, expected_file)
            else:
                difference = first_difference(_compared(found_file), _compared(expected_file), expected_file.name)
            if difference:
                return difference
    return None


def _compared(path: Path) -> Any:
    found = json.loads(path.read_text())
    return {key: value for key, value in found.items() if key not in TIMES} if isinstance(found, dict) else found


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pneumo_hf.reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("found", nargs="?", help="the rebuilt model folder")
    parser.add_argument("expected", nargs="?", help="the folder it should equal (the shipped one)")
    parser.add_argument("--exports", action="store_true", help="print the kernel caps as a shell `export` line")
    args = parser.parse_args(argv)
    if args.exports:
        print("export " + " ".join(f"{name}={value}" for name, value in KERNEL_CAPS.items()))
        return 0
    if not args.found or not args.expected:
        parser.error("give the rebuilt folder and the folder it should equal, or --exports")
    for folder in (args.found, args.expected):
        if not Path(folder, "model.safetensors").is_file():
            print(f"{folder} holds no model.safetensors: give a model folder.", file=sys.stderr)
            return 2
    same_bytes = (Path(args.found) / "model.safetensors").read_bytes() == (Path(args.expected) / "model.safetensors").read_bytes()
    bitwise = "bit for bit" if same_bytes else "within one step of their stored precision, not bit for bit"
    difference = first_folder_difference(Path(args.found), Path(args.expected))
    if difference:
        print(f"{args.found} holds another model than {args.expected}: {difference}.", file=sys.stderr)
        return 1
    print(f"{args.found} holds the same model as {args.expected}: weights {bitwise}, JSON floats within {FLOAT_RTOL:g} relative.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
