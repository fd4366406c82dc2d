"""The class labels, defined once for training, the model folder, the API and the app."""

LABELS: tuple[str, ...] = ("NORMAL", "PNEUMONIA")
ID2LABEL: dict[int, str] = dict(enumerate(LABELS))
LABEL2ID: dict[str, int] = {name: i for i, name in ID2LABEL.items()}
POSITIVE_LABEL = "PNEUMONIA"

__all__ = ["LABELS", "ID2LABEL", "LABEL2ID", "POSITIVE_LABEL"]
