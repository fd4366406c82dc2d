"""Recipe ablation: every variant of a JSON spec × every seed through train/train.py, then mean ± sd.

    python train/experiments/ablate.py train/experiments/ablation.json --train_dir ../shared/data/chest_xray_224/train --output_dir runs/ablation
    python train/experiments/ablate.py train/experiments/families.json --train_dir ../shared/data/chest_xray_224/train --output_dir runs/families \
        --test_dev_dir ../shared/data/chest_xray_224/test_dev

Runs go seed by seed (all variants of the first seed, then the next), so a stopped sweep still
compares every variant. A finished run is skipped and a stopped one resumes from its checkpoint:
run the same command again. With --test_dev_dir each finished run is scored there once, as `pneumo-hf evaluate`
scores it (saved as RUN/test_dev.json), and those figures lead the table. The table goes to stdout and
OUTPUT/ablation.md.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Optional

from pneumo_hf.commands import evaluate
from pneumo_hf.folder import CHECKPOINTS, RESULTS, ModelFolder
from pneumo_hf.metrics import mean_and_spread

TRAIN = Path(__file__).resolve().parents[1] / "train.py"
COLUMNS = {"roc_auc": "ROC-AUC", "accuracy": "accuracy", "sensitivity": "sensitivity", "specificity": "specificity", "ece": "ECE"}


def run(flags: dict, train_dir: str, output: Path) -> None:
    """One train/train.py run into `output`, its flags as a JSON arguments file (lists stay lists), resuming it
    when it has a checkpoint."""
    arguments = {"train_dir": train_dir, "output_dir": str(output), **flags}
    if any(ModelFolder(output).file(CHECKPOINTS).glob("checkpoint_*")):
        arguments["resume_from_checkpoint"] = "latest"
    output.mkdir(parents=True, exist_ok=True)
    (output / "run_arguments.json").write_text(json.dumps(arguments, indent=2))
    with open(output / "train.log", "a") as log:
        subprocess.run([sys.executable, str(TRAIN), str(output / "run_arguments.json")], stdout=log, stderr=subprocess.STDOUT, check=True)


def test_dev_results(run_dir: Path, test_dev_dir: str) -> dict:
    """The run's figures on test_dev, keyed `test_dev_<metric>`: scored once by `pneumo-hf evaluate`, then read back."""
    saved = run_dir / "test_dev.json"
    if not saved.is_file():
        evaluate.run(evaluate.parse_args(["--model", str(run_dir), "--data_dir", test_dev_dir, "--output_json", str(saved)]))
    return {f"test_dev_{key}": value for key, value in json.loads(saved.read_text()).items()}


def table(spec: dict, output_dir: Path, test_dev_dir: Optional[str] = None) -> str:
    """Markdown: one row per variant, mean ± sd over the seeds that finished, test_dev figures first when given."""
    splits = ["test_dev", "validation"] if test_dev_dir else ["validation"]
    headers = [f"{'test_dev' if split == 'test_dev' else 'val'} {label}" for split in splits for label in COLUMNS.values()]
    lines = ["| Variant | Seeds | " + " | ".join(headers) + " |", "| --- " * (len(headers) + 2) + "|"]
    for variant in spec["variants"]:
        found = []
        for run_folder in sorted((output_dir / variant).glob("seed_*")):
            if ModelFolder(run_folder).results() is None:
                continue
            results = ModelFolder(run_folder).results().json()  # flat: validation_roc_auc, ...
            if test_dev_dir:
                results.update(test_dev_results(run_folder, test_dev_dir))
            found.append(results)
        cells = [mean_and_spread([result[f"{split}_{column}"] for result in found]) for split in splits for column in COLUMNS]
        lines.append(f"| {variant} | {len(found)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="JSON with 'base' flags, 'variants' (name → flags changed) and 'seeds'.")
    parser.add_argument("--train_dir", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--test_dev_dir", help="Official test split, half A (NORMAL/ and PNEUMONIA/): score every finished run there too.")
    parser.add_argument("--summary_only", action="store_true", help="Print the table of the runs that finished; train nothing.")
    args = parser.parse_args()
    spec = json.loads(Path(args.spec).read_text())
    output_dir = Path(args.output_dir)
    if not args.summary_only:
        for seed in spec["seeds"]:
            for variant, changes in spec["variants"].items():
                output = output_dir / variant / f"seed_{seed}"
                if ModelFolder(output).read(RESULTS) is not None:
                    continue
                print(f"training {variant} seed {seed} → {output}", flush=True)
                try:
                    run({**spec["base"], **changes, "seed": seed}, args.train_dir, output)
                except subprocess.CalledProcessError:
                    print(f"{variant} seed {seed} failed; see {output / 'train.log'}", flush=True)
    summary = table(spec, output_dir, args.test_dev_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "ablation.md").write_text(summary + "\n")
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
