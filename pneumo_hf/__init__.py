"""pneumo-hf: a chest X-ray NORMAL/PNEUMONIA classifier for the Hugging Face ecosystem.

    from pneumo_hf import load_predictor
    pred = load_predictor().predict("scan.dcm", heatmap=True)
"""

from .imaging import ImageError, load_image
from .inference import Prediction, Predictor, load_predictor
from .labels import ID2LABEL, LABEL2ID, LABELS
from .models import ModelError, PneumoniaClassifier, build_classifier

__all__ = [
    "LABELS",
    "ID2LABEL",
    "LABEL2ID",
    "ImageError",
    "ModelError",
    "Prediction",
    "Predictor",
    "PneumoniaClassifier",
    "build_classifier",
    "load_image",
    "load_predictor",
]
