"""The model folder's JSON schema (`pneumo_hf.schema`): every shipped and pinned folder reads back as it is written,
folders from before the schema read back with today's names, and the card's model-index keeps the Hub's."""

import json
from pathlib import Path

import pytest

from pneumo_hf.folder import RESULTS, SUMMARY, ModelFolder
from pneumo_hf.inference import DEFAULT_MODEL_DIR
from pneumo_hf.schema import Results, TrainingSummary, current

PINNED = json.loads((Path(__file__).with_name("pinned") / "model_folders.json").read_text())


def folders() -> dict[str, tuple[dict, dict]]:
    """(all_results, training_summary) of the shipped folder and of every pinned one (the pins leave the times out)."""
    shipped = ModelFolder(DEFAULT_MODEL_DIR)
    found = {"shipped": (shipped.read(RESULTS), shipped.read(SUMMARY))}
    for name, pinned in PINNED.items():
        found[name] = ({**pinned[RESULTS], "train_seconds": 1.5}, {**pinned[SUMMARY], "train_seconds": 1.5})
    return found


@pytest.mark.parametrize("name", ["shipped", *PINNED])
def test_every_shipped_and_pinned_folder_reads_back_as_written(name):
    results, summary = folders()[name]
    assert Results.of(results).json() == results
    assert TrainingSummary.of(summary).json() == summary


def test_a_folder_from_before_the_schema_reads_its_recall_as_sensitivity():
    written, _ = folders()["shipped"]
    older = {key.replace("_sensitivity", "_recall"): value for key, value in written.items()}
    assert older != written and "test_dev_recall" in older
    read = Results.of(older)
    assert read.test_dev["sensitivity"] == written["test_dev_sensitivity"] and "recall" not in read.test_dev
    assert read.json() == written  # written again, it has today's names and nothing else changed
    report = {"after": {"recall": 0.9, "specificity": 0.8}, "crossfit": {"refit": {"lowest_recall": 0.7, "halves": 4}}}
    assert current(report) == {"after": {"sensitivity": 0.9, "specificity": 0.8}, "crossfit": {"refit": {"lowest_sensitivity": 0.7, "halves": 4}}}


def test_a_single_run_records_where_it_began_and_an_ensemble_per_member():
    _, run = folders()["resnet"]
    _, ensemble = folders()["ensemble"]
    assert "base_model" in run and run["base_model"] is None and run["linear_probe_c"] is None  # null, not absent
    assert "base_model" not in ensemble and "linear_probe_c" not in ensemble and len(ensemble["members"]) == 2
    assert TrainingSummary.of(ensemble).is_ensemble and not TrainingSummary.of(run).is_ensemble


def test_a_summary_without_what_a_run_writes_is_refused_in_a_sentence():
    _, summary = folders()["resnet"]
    with pytest.raises(Exception, match="training_summary.json lacks what a finished run writes.*write the folder again"):
        TrainingSummary.of({key: value for key, value in summary.items() if key != "command"})


def test_the_cards_model_index_names_sensitivity_recall_as_the_hub_does():
    from huggingface_hub import ModelCard

    card = ModelCard.load(ModelFolder(DEFAULT_MODEL_DIR).file("README.md"))
    results = ModelFolder(DEFAULT_MODEL_DIR).results()
    entries = {(entry.dataset_split, entry.metric_type): entry.metric_value for entry in card.data.eval_results}
    assert entries[("test", "recall")] == pytest.approx(round(results.test_dev["sensitivity"], 4))
    assert entries[("validation", "recall")] == pytest.approx(round(results.validation["sensitivity"], 4))
    assert not any(kind == "sensitivity" for _, kind in entries)
    assert f"| sensitivity | {results.validation['sensitivity']:.4f} |" in card.text
