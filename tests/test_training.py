"""Training end to end on tiny generated images: the model folder, resume, the CLI's errors, the push."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REAL_DATA, TINY_VIT, predicts_as_its_logits, tiny_args
from safetensors.torch import load_file

from pneumo_hf import load_predictor
from pneumo_hf.data import DataError
from pneumo_hf.hub import HubError, push_folder
from pneumo_hf.labels import LABELS
from pneumo_hf.training import TrainingArguments, train

pytestmark = pytest.mark.slow  # every test here trains

ROOT = Path(__file__).resolve().parents[1]


def test_training_writes_a_complete_loadable_model_folder(trained_folder, image_folder):
    for name in ("config.json", "model.safetensors", "README.md", "all_results.json", "training_args.json", "training_summary.json", "training_curves.png",
                 *(f"{split}_{plot}.png" for split in ("validation", "test_dev") for plot in ("roc_curve", "confusion_matrix", "reliability"))):
        assert (trained_folder / name).is_file(), name
    config = json.loads((trained_folder / "config.json").read_text())
    assert tuple(config["label_names"]) == LABELS
    assert 0.0 < config["decision_threshold"] <= 1.0 and config["calibration_temperature"] > 0
    assert config["trained_from_scratch"] is True
    results = json.loads((trained_folder / "all_results.json").read_text())
    assert results["epochs_run"] == 2 and results["validation_n"] == 6
    card = (trained_folder / "README.md").read_text()
    assert "model-index" in card and "random initialisation" in card and "Not a medical device" in card
    (tn, fp), (fn, tp) = results["validation_confusion_matrix"]
    assert f"{fn} of {fn + tp} PNEUMONIA films missed, {fp} of {fp + tn} NORMAL films flagged" in card
    prediction = load_predictor(trained_folder).predict(next((image_folder / "PNEUMONIA").iterdir()))
    assert set(prediction.probabilities) == set(LABELS)
    assert abs(sum(prediction.probabilities.values()) - 1) < 1e-5


def test_test_dev_figures_lead_the_card_and_match_evaluate(trained_folder, image_folder, tmp_path):
    from huggingface_hub import ModelCard

    from pneumo_hf.commands import evaluate

    results = json.loads((trained_folder / "all_results.json").read_text())
    measured = evaluate.run(evaluate.parse_args(["--model", str(trained_folder), "--data_dir", str(image_folder), "--output_json", str(tmp_path / "e.json")]))
    assert results["test_dev_confusion_matrix"] == measured["confusion_matrix"]
    for key in ("n", "accuracy", "roc_auc", "sensitivity", "specificity", "ece"):
        assert results[f"test_dev_{key}"] == pytest.approx(measured[key], abs=1e-6), key
    card = ModelCard.load(trained_folder / "README.md")
    assert card.text.index("## Figures on films it never saw") < card.text.index("## Validation figures")
    assert f"| {measured['accuracy']:.3f} | {measured['roc_auc']:.3f} |" in card.text
    assert [entry.dataset_split for entry in card.data.eval_results][::4] == ["test", "validation"]
    failure_modes = card.text.split("## Known failure modes")[1]
    (tn, fp), (fn, tp) = measured["confusion_matrix"]
    assert f"half A: {fp} of {fp + tn} NORMAL children called PNEUMONIA, {fn} of {fn + tp} PNEUMONIA films missed" in failure_modes
    assert "scanners, the official test split" not in failure_modes and "Adults: do not use it on them" in failure_modes
    domain = json.loads((trained_folder / "domain_check.json").read_text())
    assert f"flags {100 * domain['calibration_flagged']:.1f} % of\n{domain['calibration_films']} in-domain films" in card.text
    assert f"on a {domain['grid']}×{domain['grid']} grid, covariance shrinkage {domain['shrinkage']}" in card.text


def test_a_missing_test_dev_folder_stops_before_training(tmp_path, image_folder):
    with pytest.raises(DataError, match="does-not-exist"):
        train(tiny_args(tmp_path, image_folder, test_dev_dir=str(tmp_path / "does-not-exist")))
    assert not (tmp_path / "checkpoints").exists()


def test_mixup_cutmix_and_intensity_augmentation_train_on_odd_batches(tmp_path, image_folder, monkeypatch):
    """Mixup/CutMix (timm) see an even number of films per batch: a batch of 5 trains on 4, a batch of 1 is skipped."""
    from timm.data import Mixup

    seen = []
    original = Mixup.__call__
    monkeypatch.setattr(Mixup, "__call__", lambda self, x, target: seen.append(len(x)) or original(self, x, target))
    results = train(tiny_args(tmp_path, image_folder, num_train_epochs=1, per_device_train_batch_size=5, mixup=0.2, cutmix=1.0, intensity_aug=1.0, label_smoothing=0.1))
    assert results.epochs_run == 1 and seen and all(n % 2 == 0 and n > 0 for n in seen)
    assert predicts_as_its_logits(tmp_path, next((image_folder / "NORMAL").iterdir()))


def test_transformers_vit_trains_end_to_end(tmp_path, image_folder):
    results = train(tiny_args(tmp_path, image_folder, model_name_or_path="vit", config_overrides=TINY_VIT, num_train_epochs=1))
    assert results.epochs_run == 1
    assert (tmp_path / "preprocessor_config.json").is_file()
    assert load_predictor(tmp_path).classifier.family == "transformers"


def test_resume_mid_epoch_continues_the_same_run(tmp_path, image_folder):
    """Stop after step 2 of epoch 0, resume: the weights end as in an uninterrupted run, the moving
    average of weights included. (Augmentation off: its random draws after a resume differ.)"""
    flags = dict(checkpointing_steps="2", checkpoints_total_limit=10, loss="focal", aug_strength=0.0, model_ema_decay=0.9)
    whole = tmp_path / "whole"
    train(tiny_args(whole, image_folder, **flags))
    resumed = tmp_path / "resumed"
    shutil.copytree(whole / "checkpoints" / "checkpoint_0", resumed / "checkpoints" / "checkpoint_0")
    state = json.loads((resumed / "checkpoints" / "checkpoint_0" / "trainer_state.json").read_text())
    assert (state["epoch"], state["batches_done"], state["completed_steps"]) == (0, 2, 2)
    train(tiny_args(resumed, image_folder, **flags, resume_from_checkpoint="latest"))
    expected, found = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    for name, tensor in expected.items():
        assert (found[name] - tensor).abs().max() < 1e-5, name


@pytest.mark.parametrize("tolerance, dtype", [(1.0, "float16"), (0.0, "float32")])
def test_save_fp16_keeps_fp32_when_outputs_move_more_than_the_tolerance(tmp_path, trained_folder, image_folder, tolerance, dtype):
    """Finishing the tiny run again with --save_fp16: fp16 on disk only within the tolerance, and the card says which."""
    from safetensors import safe_open

    folder = tmp_path / "run"
    shutil.copytree(trained_folder, folder)
    train(tiny_args(folder, image_folder, per_device_train_batch_size=8, resume_from_checkpoint="latest", save_fp16=True, fp16_tolerance=tolerance))
    with safe_open(folder / "model.safetensors", "pt") as weights:
        stored = {str(weights.get_slice(name).get_dtype()) for name in weights.keys() if "num_batches_tracked" not in name}
    assert stored == {"F16" if dtype == "float16" else "F32"}
    results = json.loads((folder / "all_results.json").read_text())
    assert results["weights_dtype"] == dtype and 0.0 < results["fp16_max_probability_change"] < 1.0
    assert f"Weights stored in fp{dtype[-2:]}" in (folder / "README.md").read_text()
    assert predicts_as_its_logits(folder, next((image_folder / "NORMAL").iterdir()))


def test_split_seed_fixes_the_validation_split_across_seeds(tmp_path, image_folder):
    first = train(tiny_args(tmp_path / "a", image_folder, num_train_epochs=1, seed=1, split_seed=5))
    second = train(tiny_args(tmp_path / "b", image_folder, num_train_epochs=1, seed=2, split_seed=5))
    assert first.validation["n"] == second.validation["n"] == 6
    assert load_file(tmp_path / "a" / "model.safetensors")["fc.weight"].ne(load_file(tmp_path / "b" / "model.safetensors")["fc.weight"]).any()
    evaluated = subprocess.run(
        [sys.executable, str(ROOT / "train" / "evaluate.py"), "--model", str(tmp_path / "b"), "--validation_split", "--output_json", str(tmp_path / "eval.json")],
        capture_output=True, text=True, timeout=300,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    evaluation = json.loads((tmp_path / "eval.json").read_text())
    assert evaluation["n"] == 6 and evaluation["confusion_matrix"] == second.validation["confusion_matrix"]
    assert evaluation["roc_auc"] == pytest.approx(second.validation["roc_auc"], abs=1e-6)


def test_unreadable_training_images_are_skipped_and_counted(tmp_path, image_folder):
    folder = tmp_path / "train"
    shutil.copytree(image_folder, folder)
    (folder / "PNEUMONIA" / "person99_virus_1.jpeg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "NORMAL" / "IM-0099-0001.jpeg").write_bytes(b"")
    results = train(tiny_args(tmp_path / "out", folder, num_train_epochs=1, validation_dir=str(image_folder)))
    assert results.skipped_images == 2 and results.train_images == 26
    assert (tmp_path / "out" / "model.safetensors").is_file()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train" / "train.py"), *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("flags, message", [
    (["--train_dir", "/nonexistent"], "no such folder"),
    (["--model_name_or_path", "resnet5o"], "Unknown model"),
    (["--loss", "hinge"], "--loss 'hinge'"),
    (["--loss", "focal", "--mixup", "0.2"], "--loss focal does not take"),
    (["--trainable_layers", "0"], "--trainable_layers 0: give a number of layers"),
])
def test_cli_bad_input_is_one_clear_line(tmp_path, image_folder, flags, message):
    base = {"--train_dir": str(image_folder), "--output_dir": str(tmp_path / "out"), "--image_size": "32"}
    for flag, value in zip(flags[::2], flags[1::2], strict=True):
        base[flag] = value
    result = run_cli(*[item for pair in base.items() for item in pair])
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr


def test_cli_unwritable_output_dir(tmp_path, image_folder):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_cli("--train_dir", str(image_folder), "--output_dir", str(blocker / "out"))
    assert result.returncode == 1 and "not writable" in result.stderr


def test_push_calls_create_repo_then_upload_folder(monkeypatch, trained_folder):
    calls = []
    monkeypatch.setattr("pneumo_hf.hub.hub_reachable", lambda: True)
    monkeypatch.setattr("pneumo_hf.hub.create_repo", lambda repo_id, **kw: calls.append(("create", repo_id, kw["exist_ok"])) or type("Url", (), {"repo_id": repo_id})())
    monkeypatch.setattr("pneumo_hf.hub.upload_folder", lambda **kw: calls.append(("upload", kw["repo_id"], kw["folder_path"])))
    push_folder(trained_folder, "org/tiny", token="secret")
    assert calls == [("create", "org/tiny", True), ("upload", "org/tiny", str(trained_folder))]


def test_failed_push_keeps_the_folder_and_says_so(monkeypatch, trained_folder):
    monkeypatch.setattr("pneumo_hf.hub.hub_reachable", lambda: False)
    before = sorted(p.name for p in trained_folder.iterdir())
    with pytest.raises(HubError, match="stays in"):
        push_folder(trained_folder, "org/tiny", token="secret-token")
    assert sorted(p.name for p in trained_folder.iterdir()) == before


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="needs ../shared/data")
def test_a_few_steps_on_real_xrays(tmp_path):
    results = train(TrainingArguments(
        output_dir=str(tmp_path), train_dir=str(REAL_DATA), model_name_or_path="efficientnet_b0", image_size=64,
        max_train_samples=96, num_train_epochs=1, per_device_train_batch_size=16, dataloader_num_workers=0,
    ))
    assert results.train_images + results.validation["n"] == 96
    assert results.skipped_images == 0
    assert predicts_as_its_logits(tmp_path, next((REAL_DATA / "NORMAL").iterdir()))


def test_two_processes_count_each_validation_image_once(tmp_path, image_folder):
    """`accelerate launch` with 2 CPU processes and an uneven last batch: validation n stays the split's size."""
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [
        str(accelerate), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        str(ROOT / "train" / "train.py"), "--model_name_or_path", "resnet18", "--train_dir", str(image_folder), "--output_dir", str(tmp_path),
        "--image_size", "32", "--num_train_epochs", "1", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
        "--dataloader_num_workers", "0", "--validation_fraction", "0.25",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((tmp_path / "all_results.json").read_text())
    assert results["validation_n"] == 6 and sum(map(sum, results["validation_confusion_matrix"])) == 6


def test_ablation_sweep_tables_mean_and_spread_and_skips_finished_runs(tmp_path, image_folder):
    from sklearn.metrics import roc_auc_score

    from pneumo_hf import load_predictor
    from pneumo_hf.metrics import mean_and_spread

    spec = {
        "base": {"model_name_or_path": "resnet18", "image_size": 32, "num_train_epochs": 1, "per_device_train_batch_size": 6,
                 "dataloader_num_workers": 0, "validation_fraction": 0.25, "split_seed": 3},
        "variants": {"base": {}, "no_augmentation": {"aug_strength": 0.0}},
        "seeds": [1, 2],
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    command = [sys.executable, str(ROOT / "train" / "experiments" / "ablate.py"), str(tmp_path / "spec.json"), "--train_dir", str(image_folder), "--output_dir", str(tmp_path / "sweep"),
               "--test_dev_dir", str(image_folder)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    rows = [line for line in first.stdout.splitlines() if line.startswith(("| base", "| no_augmentation"))]
    assert len(rows) == 2 and all(row.split("|")[2].strip() == "2" and "±" in row for row in rows)
    films = sorted(image_folder.rglob("*.jpeg"))
    labels = [int(path.parent.name == "PNEUMONIA") for path in films]
    aucs = [roc_auc_score(labels, [p.probabilities["PNEUMONIA"] for p in load_predictor(run).predict_batch(films)]) for run in sorted((tmp_path / "sweep" / "base").glob("seed_*"))]
    assert rows[0].split(" | ")[2] == mean_and_spread(aucs)  # test_dev ROC-AUC leads, as scikit-learn counts it
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert "training" not in again.stdout and (tmp_path / "sweep" / "ablation.md").read_text().strip() in again.stdout


def test_compare_tables_each_run_and_the_spread_over_seeds(tmp_path, trained_folder, image_folder):
    second_seed = tmp_path / "seed_2"
    shutil.copytree(trained_folder, second_seed)
    results = json.loads((second_seed / "all_results.json").read_text())
    first_auc = results["validation_roc_auc"]
    results["validation_roc_auc"] = first_auc - 0.1
    (second_seed / "all_results.json").write_text(json.dumps(results))
    image = next((image_folder / "NORMAL").iterdir())
    command = [sys.executable, str(ROOT / "train" / "experiments" / "compare.py"), str(trained_folder), str(second_seed), "--image", str(image), "--repeats", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split(" | ") for line in result.stdout.splitlines() if line.startswith("| resnet18 @32")]
    assert len(rows) == 3  # two runs, then one summary row
    assert rows[0][1:3] == ["42", "42"] and rows[0][3] == f"{first_auc:.3f}" and "pytest" in rows[0][-1]
    assert rows[2][1:3] == ["2", f"{first_auc - 0.05:.3f} ± {0.1 / 2 ** 0.5:.3f}"]


def test_compare_leads_with_test_dev_figures_as_scikit_learn_counts_them(trained_folder, image_folder):
    from sklearn.metrics import accuracy_score, roc_auc_score

    from pneumo_hf import load_predictor

    image = next((image_folder / "NORMAL").iterdir())
    command = [sys.executable, str(ROOT / "train" / "experiments" / "compare.py"), str(trained_folder), "--image", str(image), "--repeats", "1", "--test_dev_dir", str(image_folder)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    header = next(line for line in result.stdout.splitlines() if line.startswith("| model @input | seed"))
    assert header.split(" | ")[3:5] == ["test_dev ROC-AUC", "test_dev accuracy"]
    row = next(line for line in result.stdout.splitlines() if line.startswith("| resnet18 @32")).split(" | ")
    predictions = load_predictor(trained_folder).predict_batch(sorted(image_folder.rglob("*.jpeg")))
    labels = [int("PNEUMONIA" in str(path.parent.name)) for path in sorted(image_folder.rglob("*.jpeg"))]
    assert row[3] == f"{roc_auc_score(labels, [p.probabilities['PNEUMONIA'] for p in predictions]):.3f}"
    assert row[4] == f"{accuracy_score(labels, [int(p.decision == 'PNEUMONIA') for p in predictions]):.3f}"


def test_occlusion_tables_each_greyed_border(trained_folder):
    result = subprocess.run([sys.executable, str(ROOT / "train" / "experiments" / "occlusion.py"), "--model", str(trained_folder), "--fraction", "0.25"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split(" | ")[0].strip("| ") for row in rows] == ["none", "left", "right", "top", "bottom"]
    assert rows[0].endswith("| 0.0000 | 0 of 6 | 0 of 6 |")
    missing = subprocess.run([sys.executable, str(ROOT / "train" / "experiments" / "occlusion.py"), "--model", str(ROOT / "tests")], capture_output=True, text=True, timeout=300)
    assert missing.returncode == 1 and "no config.json" in missing.stderr


def test_evaluate_measures_what_load_predictor_predicts_as_scikit_learn_counts(trained_folder, image_folder, tmp_path):
    """Stored test-time views, temperature and threshold applied as `load_predictor()` applies them; metrics as sklearn's."""
    from sklearn.metrics import accuracy_score, recall_score, roc_auc_score

    from pneumo_hf import load_predictor

    output = tmp_path / "eval.json"
    result = subprocess.run([sys.executable, "-m", "pneumo_hf", "evaluate", "--model", str(trained_folder), "--data_dir", str(image_folder), "--output_json", str(output)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    measured = json.loads(output.read_text())
    predictor = load_predictor(trained_folder)
    films = sorted(image_folder.rglob("*.jpeg"))
    labels = [int(film.parent.name == "PNEUMONIA") for film in films]
    predictions = predictor.predict_batch(films)
    scores = [prediction.probabilities["PNEUMONIA"] for prediction in predictions]
    decided = [int(prediction.decision == "PNEUMONIA") for prediction in predictions]
    assert measured["tta"] == list(predictor.classifier.test_time_views) and measured["n"] == len(films)
    assert measured["roc_auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    assert measured["accuracy"] == pytest.approx(accuracy_score(labels, decided), abs=1e-9)
    assert measured["sensitivity"] == pytest.approx(recall_score(labels, decided), abs=1e-9)


def test_the_arguments_create_nothing_on_disk_and_training_refuses_an_unwritable_folder(tmp_path, image_folder):
    args = tiny_args(tmp_path / "not" / "yet", image_folder)
    assert not (tmp_path / "not").exists()  # constructing the arguments writes nothing; training makes the folder
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="is not writable"):
        train(tiny_args(blocker / "out", image_folder))
    assert args.output_dir == str(tmp_path / "not" / "yet")
