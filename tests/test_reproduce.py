"""The recipe's verdict (`python -m pneumo_hf.reproduce REBUILT SHIPPED`): the same model within one step of each
tensor's stored precision and 1e-9 relative on JSON floats, else the first tensor or key that differs."""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from pneumo_hf.reproduce import main


def folder(root: Path, name: str, head: torch.Tensor, threshold: float = 0.6996832943176252) -> Path:
    path = root / name
    path.mkdir()
    save_file({"classifier.weight": head, "conv.weight": torch.ones(4, dtype=torch.float16)}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"decision_threshold": threshold, "label_names": ["NORMAL", "PNEUMONIA"]}))
    (path / "all_results.json").write_text(json.dumps({"test_dev_roc_auc": 0.9684, "train_seconds": 12.5}))
    return path


def test_one_fp16_step_is_the_same_model_two_are_not(tmp_path, capsys):
    head = torch.tensor([0.5, -0.25, 1.5, 3.0], dtype=torch.float16)
    shipped = folder(tmp_path, "shipped", head)
    one_step = head.clone()
    one_step[2] = 1.5 + 2.0**-10  # the next fp16 after 1.5: what an AVX-512 CPU's head gave in 8 entries (issue 43)
    assert main([str(folder(tmp_path, "rebuilt", one_step)), str(shipped)]) == 0
    assert "the same model" in capsys.readouterr().out
    two_steps = head.clone()
    two_steps[2] = 1.5 + 4 * 2.0**-10
    assert main([str(folder(tmp_path, "other", two_steps)), str(shipped)]) == 1
    assert "classifier.weight differs in 1 of 4 entries" in capsys.readouterr().err


def test_a_json_float_beyond_the_tolerance_is_named_times_are_not(tmp_path, capsys):
    head = torch.zeros(4, dtype=torch.float16)
    shipped = folder(tmp_path, "shipped", head)
    rebuilt = folder(tmp_path, "rebuilt", head, threshold=0.6996832943176252 * (1 + 1e-12))
    (rebuilt / "all_results.json").write_text(json.dumps({"test_dev_roc_auc": 0.9684, "train_seconds": 99.0}))
    assert main([str(rebuilt), str(shipped)]) == 0
    assert main([str(folder(tmp_path, "moved", head, threshold=0.70)), str(shipped)]) == 1
    assert "config.json.decision_threshold is 0.7, not 0.69968" in capsys.readouterr().err


def test_the_caps_print_as_one_export_line(capsys):
    assert main(["--exports"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("export ") and "ATEN_CPU_CAPABILITY=avx2" in line and "OPENBLAS_CORETYPE=Haswell" in line
