"""`pneumo-hf predict`: one row per film of an archive into a CSV or Parquet file (see `pneumo_hf.batch`).

    pneumo-hf predict ../shared/data/chest_xray_224/test_dev --output preds.csv
    pneumo-hf predict scans/ more.dcm paths.txt --output preds.parquet --heatmaps heatmaps/ --model ORG/NAME
    pneumo-hf predict hf-vision/chest-xray-pneumonia --split test --output preds.csv
    accelerate launch -m pneumo_hf predict archive/ --output preds.csv        # one shard per process
    pneumo-hf predict export/ --output preds.csv --dicom_out results/ --heatmaps overlays/ \
        --store_to 127.0.0.1:4242 --calling_ae PNEUMOHF --called_ae ORTHANC       # DICOM SR + heatmap captures into a PACS
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

logger = logging.getLogger("pneumo_hf.predict")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pneumo-hf predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="Films, folders (searched recursively, DICOM trees included), CSV (`path` column) or text lists of paths, Hub data set ids or local copies.")
    parser.add_argument("--output", required=True, help="The CSV or .parquet file of rows; run again with the same one to resume.")
    parser.add_argument("--model", default=None, help="Model folder or Hub repo id (default: the model shipped in pneumo_hf).")
    parser.add_argument("--split", default="test", help="The split read from data set inputs (default: test).")
    parser.add_argument("--heatmaps", type=Path, default=None, help="Write each film's heatmap overlay (JPEG) into this folder.")
    parser.add_argument("--batch_size", type=int, default=8, help="Films a forward pass (default 8: larger batches ran slower on a CPU).")
    parser.add_argument("--num_workers", type=int, default=1, help="DataLoader workers decoding the films.")
    parser.add_argument("--dicom_out", type=Path, default=None, help="Write a DICOM Structured Report per DICOM input (with --heatmaps also a Secondary Capture of the overlay) into this folder, in each source's study.")
    parser.add_argument("--store_to", default=None, help="HOST:PORT of a PACS to C-STORE what --dicom_out wrote into; a rerun sends only what was not stored.")
    parser.add_argument("--calling_ae", default="PNEUMOHF", help="Our AE title for --store_to (default PNEUMOHF).")
    parser.add_argument("--called_ae", default="ANY-SCP", help="The PACS's AE title for --store_to (default ANY-SCP).")
    parser.add_argument("--bf16", action="store_true", help="Compute in bfloat16 (autocast): faster on CPUs with AVX512-BF16 and on GPUs; probabilities move slightly (docs/speed.md).")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.num_workers < 0:
        parser.error("--batch_size must be at least 1 and --num_workers at least 0")
    if Path(args.output).suffix.lower() not in {".csv", ".parquet"}:
        parser.error(f"--output {args.output}: name a .csv or a .parquet file")
    if args.store_to and not args.dicom_out:
        parser.error("--store_to sends what --dicom_out writes: add --dicom_out FOLDER")
    if args.store_to:
        host, _, port = args.store_to.rpartition(":")
        if not host or not port.isdigit():
            parser.error(f"--store_to {args.store_to}: give HOST:PORT, e.g. 127.0.0.1:4242")
        args.store_to = (host, int(port))
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Predict every input; bad films become rows with their error, and the run still exits 0."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    args = parse_args(argv)
    import torch
    from accelerate import PartialState

    from pneumo_hf import ModelError, load_predictor
    from pneumo_hf.batch import CsvSink, InputError, OverlaySink, collect_inputs, predict_archive
    from pneumo_hf.commands import as_flags
    from pneumo_hf.dicom_out import DicomSink

    state = PartialState()
    try:
        films = collect_inputs(args.inputs, args.split)
        predictor = load_predictor(args.model)
    except InputError as error:
        logger.error("%s", as_flags(str(error)))
        return 1
    except ModelError as error:
        logger.error("--model %s: %s", args.model, error)
        return 1
    predictor.classifier.to(state.device)
    if state.device.type == "cpu" and state.num_processes > 1:  # the cores shared out, not each process spinning on all
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // state.num_processes))
    table = CsvSink(Path(args.output), state.process_index)
    sinks = [table, *([OverlaySink(args.heatmaps)] if args.heatmaps else []), *([DicomSink(predictor, args.dicom_out, heatmaps=args.heatmaps is not None)] if args.dicom_out else [])]
    with torch.autocast(state.device.type, dtype=torch.bfloat16, enabled=args.bf16):
        counts = predict_archive(predictor, films, sinks, args.batch_size, args.num_workers, state if state.num_processes > 1 else None)
    if state.is_main_process:
        print(f"{counts['films']} films: {counts['predicted']} predicted now, {counts['skipped']} already done, {table.errors} with an error (see the `error` column of {args.output}).")
        if args.dicom_out:
            return dicom_results(args, sinks[-1])
    return 0


def dicom_results(args: argparse.Namespace, sink) -> int:
    """Say what the DICOM sink wrote, store it with --store_to; 1 when a DICOM film got no result or was not stored."""
    from pneumo_hf.dicom_out import StoreError, store

    files, problems = sink.results()
    print("\n".join([*problems, f"{len(files)} DICOM objects in {args.dicom_out}"]))
    if not args.store_to:
        return 1 if problems else 0
    host, port = args.store_to
    try:
        answers = store(files, args.dicom_out, host, port, args.calling_ae, args.called_ae)
    except StoreError as error:
        for path in error.files:
            print(f"{path}: not stored. {error}")
        return 1
    for path, answer in answers.items():
        print(f"{path}: {answer}")
    print(f"{sum(answer == 'stored' for answer in answers.values())} stored now, {len(files) - len(answers)} stored before")
    return 0 if all(answer == "stored" for answer in answers.values()) and not problems else 1
