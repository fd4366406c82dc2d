"""Recipe ablation: every variant of a JSON spec × every seed through train/train.py, then mean ± sd.

    python train/ablate.py train/ablation.json --train_dir ../shared/data/chest_xray_224/train --output_dir runs/ablation

Runs go seed by seed (all variants of the first seed, then the next), so a stopped sweep still
compares every variant. A finished run is skipped and a stopped one resumes from its checkpoint:
run the same command again. The table goes to stdout and OUTPUT/ablation.md.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from pneumo_hf.metrics import mean_and_spread

TRAIN = Path(__file__).resolve().parent / "train.py"
COLUMNS = ("roc_auc", "accuracy", "recall", "specificity", "ece")


def run(flags: dict, train_dir: str, output: Path) -> None:
    """One train/train.py run into `output`, its flags as a JSON arguments file (lists stay lists), resuming it
    when it has a checkpoint."""
    arguments = {"train_dir": train_dir, "output_dir": str(output), **flags}
    if any((output / "checkpoints").glob("checkpoint_*")):
        arguments["resume_from_checkpoint"] = "latest"
    output.mkdir(parents=True, exist_ok=True)
    (output / "run_arguments.json").write_text(json.dumps(arguments, indent=2))
    with open(output / "train.log", "a") as log:
        subprocess.run([sys.executable, str(TRAIN), str(output / "run_arguments.json")], stdout=log, stderr=subprocess.STDOUT, check=True)


def table(spec: dict, output_dir: Path) -> str:
    """Markdown: one row per variant, mean ± sd over the seeds that finished."""
    lines = [
        "| Variant | Seeds | Val ROC-AUC | Accuracy | Sensitivity | Specificity | ECE |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for variant in spec["variants"]:
        found = [json.loads(p.read_text()) for p in sorted((output_dir / variant).glob("seed_*/all_results.json"))]
        cells = [mean_and_spread([result[f"validation_{column}"] for result in found]) for column in COLUMNS]
        lines.append(f"| {variant} | {len(found)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="JSON with 'base' flags, 'variants' (name → flags changed) and 'seeds'.")
    parser.add_argument("--train_dir", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--summary_only", action="store_true", help="Print the table of the runs that finished; train nothing.")
    args = parser.parse_args()
    spec = json.loads(Path(args.spec).read_text())
    output_dir = Path(args.output_dir)
    if not args.summary_only:
        for seed in spec["seeds"]:
            for variant, changes in spec["variants"].items():
                output = output_dir / variant / f"seed_{seed}"
                if (output / "all_results.json").is_file():
                    continue
                print(f"training {variant} seed {seed} → {output}", flush=True)
                try:
                    run({**spec["base"], **changes, "seed": seed}, args.train_dir, output)
                except subprocess.CalledProcessError:
                    print(f"{variant} seed {seed} failed; see {output / 'train.log'}", flush=True)
    summary = table(spec, output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "ablation.md").write_text(summary + "\n")
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
