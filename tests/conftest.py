"""Shared fixtures: tiny generated X-ray-like images, image folders, DICOM files and model folders."""

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(1)  # small tests; leave the other core to whatever else runs

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chest_xray_224" / "train"
TINY_VIT = "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64"


def xray_like(seed: int, size=(48, 40), pneumonia: bool = False) -> np.ndarray:
    """A grey HxW uint8 image: two dark 'lungs' on a bright body, hazier when `pneumonia`."""
    rng = np.random.default_rng(seed)
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.full(size, 170.0)
    for cx in (width * 0.3, width * 0.7):
        lung = ((xx - cx) / (width * 0.17)) ** 2 + ((yy - height * 0.5) / (height * 0.33)) ** 2 < 1
        image[lung] = 120.0 if pneumonia else 40.0
    image += rng.normal(0, 12, size)
    return np.clip(image, 0, 255).astype(np.uint8)


def dicom_dataset(pixels: np.ndarray, photometric: str = "MONOCHROME2", slope: float = 1.0, intercept: float = 0.0, with_pixels: bool = True):
    """A minimal valid DICOM data set (explicit VR little endian) holding `pixels` (uint8, or uint16 of 12 bits or more)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.Modality = "CR"
    if with_pixels:
        bits = 8 if pixels.dtype == np.uint8 else max(12, int(pixels.max()).bit_length())
        dataset.Rows, dataset.Columns = pixels.shape
        dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, photometric
        dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 8 if bits == 8 else 16, bits, bits - 1, 0
        dataset.RescaleSlope, dataset.RescaleIntercept = slope, intercept
        dataset.PixelData = pixels.tobytes()
    return dataset


def dicom_bytes(dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def make_dicom(pixels: np.ndarray, photometric: str = "MONOCHROME2", slope: float = 1.0, intercept: float = 0.0, with_pixels: bool = True) -> bytes:
    """A minimal valid DICOM file (explicit VR little endian) holding `pixels` (uint8 or uint16)."""
    return dicom_bytes(dicom_dataset(pixels, photometric, slope, intercept, with_pixels))


def compressed_dicom(pixels: np.ndarray, syntax: str) -> bytes:
    """The DICOM of `pixels` in the compressed transfer syntax `syntax` (a UID), as a PACS exports it: pydicom
    encodes RLE and JPEG 2000 itself; imagecodecs (libjpeg-turbo, CharLS) writes the JPEG family."""
    import imagecodecs
    from pydicom import uid
    from pydicom.encaps import encapsulate

    dataset = dicom_dataset(pixels)
    if syntax in (uid.RLELossless, uid.JPEG2000Lossless):
        dataset.compress(syntax)
        return dicom_bytes(dataset)
    bits = int(dataset.BitsStored)
    encoders = {
        uid.JPEGLosslessSV1: lambda: imagecodecs.jpeg8_encode(pixels, lossless=True, predictor=1, bitspersample=bits),
        uid.JPEGLossless: lambda: imagecodecs.jpeg8_encode(pixels, lossless=True, predictor=6, bitspersample=bits),
        uid.JPEGLSLossless: lambda: imagecodecs.jpegls_encode(pixels, level=0),
        uid.JPEGBaseline8Bit: lambda: imagecodecs.jpeg8_encode(pixels, level=95),
        uid.JPEGExtended12Bit: lambda: imagecodecs.jpeg8_encode(pixels, level=95, bitspersample=12),
    }
    dataset.PixelData = encapsulate([encoders[syntax]()])
    dataset["PixelData"].VR = "OB"
    dataset.file_meta.TransferSyntaxUID = syntax
    return dicom_bytes(dataset)


def write_image_folder(root: Path, per_class: int = 12, size=(48, 40)) -> Path:
    """NORMAL/ and PNEUMONIA/ with Kermany-style names, two images per patient."""
    for label, pneumonia in (("NORMAL", False), ("PNEUMONIA", True)):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            patient = i // 2
            name = f"person{patient}_bacteria_{i}.jpeg" if pneumonia else f"IM-{patient:04d}-{i:04d}.jpeg"
            Image.fromarray(xray_like(1000 * pneumonia + i, size, pneumonia)).save(root / label / name)
    return root


@pytest.fixture(scope="session", autouse=True)
def film_cache_dir(tmp_path_factory) -> Path:
    """Training runs (and the scripts the tests start) keep their film cache here, not in the user's home."""
    folder = tmp_path_factory.mktemp("film_cache")
    os.environ["PNEUMO_CACHE_DIR"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("xrays") / "train")


def tiny_args(output: Path, image_folder: Path, **overrides):
    """The arguments of every tiny run the tests train: resnet18 at 32 px, 2 epochs of batches of 8, a quarter of the
    films for validation, no loader workers; `overrides` change any (`image_size=None`: the model's own)."""
    from pneumo_hf.training import TrainingArguments

    values = dict(output_dir=str(output), train_dir=str(image_folder), model_name_or_path="resnet18", image_size=32, num_train_epochs=2,
                  per_device_train_batch_size=8, dataloader_num_workers=0, validation_fraction=0.25)
    return TrainingArguments(**{**values, **overrides})


def tiny_run(output: Path, image_folder: Path, **overrides) -> Path:
    """A tiny run (`tiny_args`) trained into `output`."""
    from pneumo_hf.training import train

    train(tiny_args(output, image_folder, **overrides), command="pytest")
    return Path(output)


@pytest.fixture(scope="session")
def trained_folder(tmp_path_factory, image_folder) -> Path:
    """A model folder written by a real two-epoch training run on the tiny images (which stand in for test_dev too)."""
    return tiny_run(tmp_path_factory.mktemp("runs") / "tiny", image_folder, test_dev_dir=str(image_folder))


def predicts_as_its_logits(folder: Path, film) -> bool:
    """Whether `load_predictor(folder)` (batch norms folded, stored views, temperature, intercept and threshold) gives
    `film` the probability and decision computed from the stored classifier's own logits, the long way round."""
    import torch

    from pneumo_hf import load_predictor, metrics
    from pneumo_hf.imaging import load_image
    from pneumo_hf.models import PneumoniaClassifier
    from pneumo_hf.transforms import build_transform
    from pneumo_hf.tta import logits_with_views

    prediction = load_predictor(folder).predict(film)
    classifier = PneumoniaClassifier.from_pretrained(folder).float().eval()
    with torch.no_grad():
        logits = logits_with_views(classifier, build_transform(classifier.data_config)(load_image(film))[None], classifier.test_time_views)
    pneumonia = metrics.probabilities(logits.numpy(), classifier.temperature, classifier.intercept)[0, 1]
    decision = "PNEUMONIA" if pneumonia >= classifier.threshold else "NORMAL"
    return abs(prediction.probabilities["PNEUMONIA"] - pneumonia) < 1e-4 and prediction.decision == decision


SLOW_FIXTURES = {"trained_folder", "server", "default_server"}  # a training run or a live app behind them


def pytest_collection_modifyitems(items):
    """`pytest -m "not slow"` leaves out what trains a model, starts a server or builds the wheel."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
