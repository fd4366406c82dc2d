"""Prediction for one X-ray or a batch, with an optional Grad-CAM heatmap.

    from pneumo_hf import load_predictor
    predictor = load_predictor()                       # the model shipped in the package
    pred = predictor.predict("scan.dcm", heatmap=True)
    pred.decision, pred.probabilities, pred.heatmap
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from PIL import Image

from .domain import DomainCheck
from .folder import CONFIG, ModelFolder
from .folding import fold_batch_norms
from .imaging import ImageSource, load_image, xray_warnings
from .labels import LABEL2ID, LABELS, POSITIVE_LABEL
from .models import ModelError, PneumoniaClassifier, resolve_model_folder
from .transforms import build_transform, denormalise, normalise
from .tta import logits_with_views

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_MODEL_DIR", "Prediction", "Predictor", "load_predictor"]

DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"
DEFAULT_MODEL_NAME = "pneumo_hf default model"


@dataclass
class Prediction:
    """What the model says of one image."""

    probabilities: dict[str, float]
    decision: str
    threshold: float
    image: Image.Image = field(repr=False)
    heatmap: Optional[np.ndarray] = field(default=None, repr=False)
    warnings: list[str] = field(default_factory=list)


class Predictor:
    """A loaded classifier with its preprocessing, threshold, temperature, test-time views and heatmaps."""

    def __init__(self, classifier: PneumoniaClassifier, folder: Optional[Path] = None, name: Optional[str] = None, fold_norms: bool = False):
        """With `fold_norms`, a timm CNN's batch norms are folded into its convolutions, in place (pneumo_hf.folding):
        for a classifier the predictor owns, as `load_predictor` gives it; a caller's own model is left as it is."""
        self.classifier = classifier.eval()
        if classifier.adapter.is_cnn:  # a quarter less CPU per film for the CNNs (docs/speed.md)
            self.classifier.to(memory_format=torch.channels_last)
        self.folder = folder  # the model folder, for its card and plots
        self.domain = DomainCheck.load(folder, classifier) if folder else None  # flags films unlike the training films
        if fold_norms and classifier.adapter.is_cnn:  # after the domain check took its modules: a features check reads the first convolution unfolded
            example = torch.rand(1, *classifier.data_config["input_size"], generator=torch.Generator().manual_seed(0))
            fold_batch_norms(classifier.backbone, example.to(next(classifier.parameters())))
        if self.domain is not None:
            self.domain.watch()  # a pooled check reads the embedding of the prediction's own forward pass
        self.name = name or (str(folder) if folder else classifier.architecture)
        self.transform = build_transform(classifier.data_config)
        self._heatmaps = None

    @property
    def threshold(self) -> float:
        return self.classifier.threshold

    @cached_property
    def revision(self) -> Optional[str]:
        """The Hub commit of a downloaded model, else the start of the SHA-256 of its weights file."""
        if self.folder is None:
            return None
        if self.folder.parent.name == "snapshots":  # huggingface_hub's cache layout: snapshots/<commit>/
            return self.folder.name
        digest = self.model_folder.weights_sha256()
        return f"sha256:{digest}" if digest else None

    @property
    def model_folder(self) -> Optional[ModelFolder]:
        """The folder's files (card, results, plots, domain check record), or None for a classifier built in memory."""
        return ModelFolder(self.folder) if self.folder else None

    def predict(self, source: ImageSource, heatmap: bool = False) -> Prediction:
        """One image: a path (any image type or DICOM), bytes, a PIL image or a numpy array."""
        return self.predict_batch([source], heatmap=heatmap)[0]

    def to_dicom_sr(self, source):
        """Predict the DICOM film `source` (a pydicom Dataset) and return its Structured Report (pneumo_hf.dicom_out):
        `predictor.to_dicom_sr(pydicom.dcmread("film.dcm")).save_as("film.sr.dcm")`."""
        from pydicom.filebase import DicomBytesIO

        from .dicom_out import identity_of, structured_report

        buffer = DicomBytesIO()
        source.save_as(buffer, enforce_file_format=False)
        prediction = self.predict(buffer.getvalue())
        return structured_report(source, prediction.decision, prediction.probabilities[POSITIVE_LABEL], prediction.threshold, prediction.warnings, identity_of(self))

    def predict_batch(self, sources: Sequence[ImageSource], heatmap: bool = False) -> list[Prediction]:
        """Several images, with their test-time views, in one forward pass. Raises `ImageError` for the
        first unreadable one."""
        images = [load_image(source) for source in sources]
        return self.predict_images(images, torch.stack([self.transform(image) for image in images]), heatmap)

    def predict_images(self, images: Sequence[Image.Image], pixel_values: torch.Tensor, heatmap: bool = False, warnings: Optional[Sequence[list[str]]] = None) -> list[Prediction]:
        """Decoded `images` and their `self.transform`ed `pixel_values` (a batch): what a DataLoader that decodes
        in its workers hands over. `warnings` per image when the workers computed them too."""
        probabilities, maps = self.probabilities(pixel_values, heatmap)
        warnings = warnings if warnings is not None else [xray_warnings(image) for image in images]
        if self.domain is not None:
            sentences = self.domain_warnings(pixel_values, seen=True)
            warnings = [[sentence, *notes] if sentence else list(notes) for sentence, notes in zip(sentences, warnings, strict=True)]
        return [self._prediction(*row) for row in zip(images, probabilities, maps, warnings, strict=True)]

    def domain_warnings(self, pixel_values: torch.Tensor, seen: bool = False) -> list[Optional[str]]:
        """The domain check's sentence for each film of a normalised batch (None when it looks like the training
        films); a flagged film's negative is checked too, to tell an inverted film. `seen`: the batch has just been
        through the classifier in this thread (a pooled check reuses that pass)."""
        distances = self.domain.distances(pixel_values, seen)
        flagged = [i for i, distance in enumerate(distances) if distance > self.domain.cut]
        inverted = dict(zip(flagged, self.domain.distances(self._negatives(pixel_values[flagged])), strict=True)) if flagged else {}
        return [self.domain.warning(float(distance), inverted.get(i)) for i, distance in enumerate(distances)]

    def _negatives(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The normalised batch of the films' negatives (1 − x before normalisation), without decoding them again."""
        config = self.classifier.data_config
        return normalise(1.0 - denormalise(pixel_values, config["mean"], config["std"]), config["mean"], config["std"])

    def probabilities(self, pixel_values: torch.Tensor, heatmap: bool = False) -> tuple[np.ndarray, list[Optional[np.ndarray]]]:
        """Calibrated probabilities (batch, 2) of a normalised batch, averaged over the stored test-time views, and
        with `heatmap` the PNEUMONIA heatmaps at the model's input size (else Nones)."""
        views = self.classifier.test_time_views
        pixel_values = pixel_values.to(next(self.classifier.parameters()).device)
        if heatmap:
            maps, logits = self._heatmap_maker()(pixel_values, views)
        else:
            maps = [None] * len(pixel_values)
            with torch.inference_mode():
                logits = logits_with_views(self.classifier, pixel_values, views)
        scaled = logits.float() / self.classifier.temperature
        if self.classifier.intercept:  # Platt's, on the PNEUMONIA logit (metrics.probabilities)
            scaled[:, LABEL2ID[POSITIVE_LABEL]] += self.classifier.intercept
        return torch.softmax(scaled, dim=1).cpu().numpy(), list(maps)

    def decide(self, pneumonia: float) -> str:
        """The label at the model's stored threshold for a PNEUMONIA probability."""
        return POSITIVE_LABEL if pneumonia >= self.threshold else LABELS[1 - LABEL2ID[POSITIVE_LABEL]]

    def _prediction(self, image: Image.Image, probabilities: np.ndarray, cam: Optional[np.ndarray], warnings: list[str]) -> Prediction:
        probabilities = {name: float(probabilities[i]) for i, name in enumerate(LABELS)}
        heatmap = None if cam is None else _resize(cam, image.size)
        return Prediction(probabilities, self.decide(probabilities[POSITIVE_LABEL]), self.threshold, image, heatmap, warnings)

    def _heatmap_maker(self):
        if self._heatmaps is None:
            from .cam import HeatmapMaker

            self._heatmaps = HeatmapMaker(self.classifier)
        return self._heatmaps


def _resize(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    resized = np.asarray(Image.fromarray(cam, mode="F").resize(size, Image.BILINEAR), dtype=np.float32)
    return np.clip(resized, 0.0, 1.0)


def load_predictor(name_or_path: Union[str, os.PathLike, None] = None) -> Predictor:
    """A predictor for a local model folder or a Hub repo id; with no argument, the model shipped in the package."""
    if name_or_path is None:
        if not ModelFolder(DEFAULT_MODEL_DIR).has(CONFIG):
            raise ModelError("No default model ships with this install; pass a model folder or Hub id, e.g. load_predictor('runs/b0'), or set PNEUMO_MODEL for the app.")
        name_or_path, name = DEFAULT_MODEL_DIR, DEFAULT_MODEL_NAME
    else:
        name = str(name_or_path)
    folder = resolve_model_folder(name_or_path)
    return Predictor(PneumoniaClassifier.from_pretrained(folder), folder=folder, name=name, fold_norms=True)
