"""The class labels and the not-a-medical-device sentence, each defined once for training, the model folder, the API,
the app and the DICOM reports."""

LABELS: tuple[str, ...] = ("NORMAL", "PNEUMONIA")
ID2LABEL: dict[int, str] = dict(enumerate(LABELS))
LABEL2ID: dict[str, int] = {name: i for i, name in ID2LABEL.items()}
POSITIVE_LABEL = "PNEUMONIA"
NOT_A_DEVICE = (  # ASCII only: it is also a DICOM text value
    "Not a medical device: a research model trained on pediatric (age 1-5) anterior-posterior chest films from one hospital; "
    "do not use it to diagnose or treat anyone."
)

__all__ = ["LABELS", "ID2LABEL", "LABEL2ID", "NOT_A_DEVICE", "POSITIVE_LABEL"]
