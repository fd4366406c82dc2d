"""Any upload (path, bytes, PIL image, numpy array; JPEG/PNG/WebP/BMP/TIFF/GIF or DICOM) → a clean RGB image.

    from pneumo_hf.imaging import load_image
    image = load_image("scan.dcm")        # PIL.Image in mode "RGB", EXIF orientation applied
    image = load_image("scan.dcm", max_side=1024)   # at most 1,024 px a side, reduced as it is decoded (the Space)
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".dcm", ".dicom")
MAX_FILE_BYTES = 50 * 1024 * 1024
# 25 megapixels: the largest flat-panel detectors are 43 x 43 cm at about 100 um (4,300 x 4,300 = 18.5 MP), computed
# radiography plates 35 x 43 cm (about 3,500 x 4,300); docs/app.md gives the memory this bounds.
MAX_PIXELS = 25_000_000
MIN_SIDE = 16

ImageSource = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]

logger = logging.getLogger(__name__)

__all__ = ["ImageError", "load_image", "displayed_grey", "film_files", "hidden_in", "is_dicom_file", "is_film_file", "xray_warnings", "IMAGE_SUFFIXES", "MAX_FILE_BYTES", "MAX_PIXELS", "MIN_SIDE"]


class ImageError(UserError, ValueError):
    """An input that cannot be read as an image; the message says what to do."""


def load_image(source: ImageSource, max_side: Optional[int] = None) -> Image.Image:
    """Read `source` into an 8-bit RGB PIL image, or raise `ImageError` with a one-line reason. With `max_side`, an
    image larger than that on a side is reduced as it is decoded (JPEG's draft mode; DICOM pixels block-averaged once
    read, before the LUTs; other formats right after decoding): memory stays within the decoded pixels' own size."""
    if isinstance(source, Image.Image):
        image = _normalise(source, max_side)
    elif isinstance(source, np.ndarray):
        image = _from_array(_block_mean(np.asarray(source), max_side))
    else:
        data = _read_bytes(source)
        image = _from_dicom(data, max_side) if _is_dicom(data, source) else _from_encoded(data, max_side)
    if max_side and max(image.size) > max_side:  # after a DICOM's block means or an array's: exactly the cap
        image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    if min(image.size) < MIN_SIDE:
        raise ImageError(f"The image is only {image.width}x{image.height} pixels; upload an X-ray at least {MIN_SIDE} pixels on each side.")
    return image


def _read_bytes(source: Union[str, os.PathLike, bytes]) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"No file at {path}; check the path.")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ImageError(f"The file is {path.stat().st_size / 2**20:.0f} MB, over the {MAX_FILE_BYTES // 2**20} MB limit; upload a smaller export of the X-ray.")
        data = path.read_bytes()
    if not data:
        raise ImageError("The file is empty (0 bytes); upload the X-ray again.")
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(f"The file is {len(data) / 2**20:.0f} MB, over the {MAX_FILE_BYTES // 2**20} MB limit; upload a smaller export of the X-ray.")
    return data


def is_dicom_file(path: Union[str, os.PathLike]) -> bool:
    """A DICOM file by its preamble, whatever its name (PACS exports often have none)."""
    with open(path, "rb") as file:
        return file.read(132)[128:132] == b"DICM"


NOT_FILMS = {"dicomdir", "thumbs.db", "desktop.ini"}  # a DICOM media index (PACS exports, CDs) and Windows' folder files


def is_film_file(path: Path) -> bool:
    """A file to read as a film: an image or DICOM suffix, or any other name (none, or a UID's last digits as PACS
    exports write `1.2.840...45.1`) with a DICOM preamble; never a DICOMDIR index, Thumbs.db or desktop.ini."""
    if not path.is_file() or path.name.lower() in NOT_FILMS:
        return False
    return path.suffix.lower() in IMAGE_SUFFIXES or is_dicom_file(path)


def film_files(folder: Path) -> list[Path]:
    """Every film under `folder`, sorted, as a person counts them: macOS' `__MACOSX/` copies and `._` resource forks,
    other dot files and dot folders, DICOMDIR indexes and Windows' Thumbs.db are not films and are passed over."""
    return [path for path in sorted(Path(folder).rglob("*")) if not hidden_in(path, folder) and is_film_file(path)]


def hidden_in(path: Path, root: Path) -> bool:
    """A path under `root` that an archive tool added: macOS' `__MACOSX/` and any dot file or dot folder."""
    return any(part.startswith((".", "__MACOSX")) for part in path.relative_to(root).parts)


def _is_dicom(data: bytes, source: object) -> bool:
    named_dicom = isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() in {".dcm", ".dicom"}
    return data[128:132] == b"DICM" or named_dicom


def _from_encoded(data: bytes, max_side: Optional[int] = None) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _check_pixels(image.width, image.height)
            image.seek(0)  # first frame of an animated GIF/WebP/TIFF
            if max_side:
                image.draft(None, (max_side, max_side))  # a JPEG decodes at 1/2, 1/4 or 1/8 scale; others ignore it
            image.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"The image claims more than {MAX_PIXELS:,} pixels (a decompression bomb?); upload a normal-sized X-ray.") from error
    except UnidentifiedImageError as error:
        raise ImageError("This file is not an image we can read; upload a JPEG, PNG, WebP, BMP, TIFF, GIF or DICOM (.dcm) X-ray.") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"The image file is damaged or truncated ({error}); export the X-ray again.") from error
    return _normalise(image, max_side)


def _check_pixels(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise ImageError(f"The image is {width}x{height} pixels, over the {MAX_PIXELS:,}-pixel limit; downscale it before uploading.")


def _normalise(image: Image.Image, max_side: Optional[int] = None) -> Image.Image:
    """EXIF orientation, at most `max_side` a side, then any mode (16-bit, float, palette, RGBA, CMYK, 1-bit) → RGB."""
    _check_pixels(image.width, image.height)
    if max_side and max(image.size) > max_side:
        if image.mode == "P":
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        scale = max_side / max(image.size)  # a new reduced image (block means first): the decoded one is never copied
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BILINEAR, reducing_gap=2.0)
    image = ImageOps.exif_transpose(image)
    if image.mode in {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}:
        return _from_array(np.asarray(image))
    if image.mode in {"RGBA", "LA", "PA"} or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _from_array(array: np.ndarray) -> Image.Image:
    """A 2-D (grey) or HxWx{1,3,4} array of any integer or float type → RGB."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(f"An array of shape {array.shape} is not an image; pass HxW (grey) or HxWx3 (RGB).")
    _check_pixels(array.shape[1], array.shape[0])
    if array.ndim == 3:
        array = array[..., :3]
    if array.dtype != np.uint8:
        array = _to_uint8(array)
    return Image.fromarray(array).convert("RGB")


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Integers scale by the smallest bit depth that holds their maximum (8-bit data stored as 16-bit
    round-trips exactly); floats in [0, 1] scale by 255, other floats by their range."""
    if np.issubdtype(array.dtype, np.integer) and array.min() >= 0:
        bits = max(8, int(np.ceil(np.log2(int(array.max()) + 1))))
        return np.round(array.astype(np.float64) * 255.0 / (2**bits - 1)).astype(np.uint8)
    array = array.astype(np.float64)
    low, high = float(np.nanmin(array)), float(np.nanmax(array))
    if low >= 0.0 and high <= 1.0:
        low, high = 0.0, 1.0
    if high <= low:
        return np.zeros(array.shape, np.uint8)
    return np.round((np.nan_to_num(array, nan=low) - low) * 255.0 / (high - low)).astype(np.uint8)


DICOM_KEYWORDS = ("PixelData", "SOPClassUID", "Modality", "Rows", "StudyInstanceUID", "PatientID")  # any real data set has some


def _from_dicom(data: bytes, max_side: Optional[int] = None) -> Image.Image:
    import pydicom

    has_header = data[128:132] == b"DICM"
    if not has_header and _is_encoded_image(data):  # a JPEG or PNG saved under a .dcm name
        return _from_encoded(data)
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as error:  # pydicom raises many types for damaged files
        if not has_header:
            raise ImageError(NOT_DICOM) from error
        raise ImageError(f"This DICOM file cannot be read ({type(error).__name__}); export it again from the PACS.") from error
    if not has_header and not _has_dicom_elements(dataset):
        raise ImageError(NOT_DICOM)
    if "PixelData" not in dataset:
        raise ImageError("This DICOM file holds no image (no Pixel Data element); upload the DICOM of the X-ray itself, not a report or structured document.")
    rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
    if not rows or not columns:
        raise ImageError(f"This DICOM file's image is {columns}×{rows} pixels: it holds no picture; export the X-ray again from the PACS.")
    _check_pixels(columns, rows)
    _guess_transfer_syntax(dataset)
    _check_pixel_length(dataset, rows, columns)
    try:
        pixels = dataset.pixel_array  # compressed syntaxes through pylibjpeg (libjpeg, openjpeg) and pydicom's own RLE
    except Exception as error:
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        stored = f"stored as {syntax.name} ({syntax})" if syntax else "with no transfer syntax"
        raise ImageError(f"The DICOM pixels, {stored}, cannot be decoded here ({error}); export the film uncompressed, or as JPEG Lossless, JPEG-LS, JPEG 2000 or RLE.") from error
    if int(dataset.get("NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    pixels = _block_mean(pixels, max_side)
    if str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).startswith("MONOCHROME"):
        pixels = displayed_grey(pixels, dataset)
    return _from_array(pixels)


def displayed_grey(pixels: np.ndarray, dataset) -> np.ndarray:
    """A grey film's stored values as they are displayed, in [0, 1] (0 black), in the order of the standard's
    grayscale pipeline (PS3.4 N.2): the modality LUT or rescale, the VOI LUT or window, then the presentation LUT:
    its sequence or its shape (INVERSE turns the film over); MONOCHROME1 is turned over once, by its INVERSE shape (as
    DX films carry it) or, with none or IDENTITY, by its photometric interpretation."""
    from pydicom.pixels import apply_modality_lut, apply_presentation_lut, apply_voi_lut

    values = apply_voi_lut(apply_modality_lut(pixels, dataset), dataset)
    values = apply_presentation_lut(values, dataset).astype(np.float64)
    low, high = float(values.min()), float(values.max())
    values = (values - low) / (high - low) if high > low else np.zeros_like(values)
    shape = str(dataset.get("PresentationLUTShape", "")).strip().upper()
    if dataset.get("PhotometricInterpretation") == "MONOCHROME1" and shape != "INVERSE" and "PresentationLUTSequence" not in dataset:
        values = 1.0 - values
    return values


def _block_mean(pixels: np.ndarray, max_side: Optional[int]) -> np.ndarray:
    """`pixels` (HxW or HxWxC) averaged over k x k blocks, k the largest integer that keeps the longer side at least
    `max_side` (the input's own type kept; `load_image` then resizes to the cap); unchanged when it fits or `max_side`
    is None."""
    if not max_side or pixels.ndim < 2 or max(pixels.shape[:2]) < 2 * max_side:
        return pixels
    k = max(pixels.shape[:2]) // max_side
    height, width = pixels.shape[0] // k, pixels.shape[1] // k
    blocks = pixels[: height * k, : width * k].reshape(height, k, width, k, *pixels.shape[2:])
    mean = blocks.mean(axis=(1, 3), dtype=np.float32)
    return np.round(mean).astype(pixels.dtype) if np.issubdtype(pixels.dtype, np.integer) else mean.astype(pixels.dtype)


NOT_DICOM = ("This file is named like a DICOM file but is not one (no DICOM header, no DICOM elements); upload the X-ray "
             "as the PACS exports it, or as a JPEG or PNG.")


def _is_encoded_image(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except Exception:  # PIL raises many types for what it cannot read
        return False
    return True


def _has_dicom_elements(dataset) -> bool:
    """Whether a file read without a DICOM header holds real DICOM elements, not bytes parsed as tags."""
    try:
        return any(keyword in dataset for keyword in DICOM_KEYWORDS)
    except Exception:  # garbage parsed as tags can fail on access
        return False


def _guess_transfer_syntax(dataset) -> None:
    """A data set written without its 128-byte preamble and file meta (older modalities do this) has no transfer
    syntax; take the one pydicom read it with (implicit or explicit VR, little or big endian)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(dataset, "file_meta", None) or FileMetaDataset()
    if "TransferSyntaxUID" in meta:
        return
    implicit, little_endian = dataset.original_encoding
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little_endian else ExplicitVRBigEndian
    dataset.file_meta = meta
    logger.info("DICOM without file meta: read as %s.", meta.TransferSyntaxUID.name)


def _check_pixel_length(dataset, rows: int, columns: int) -> None:
    """Uncompressed pixel data shorter than its image needs: a file cut short in transfer."""
    if dataset.file_meta.TransferSyntaxUID.is_compressed:
        return
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    samples, bits = int(dataset.get("SamplesPerPixel", 1) or 1), int(dataset.get("BitsAllocated", 8) or 8)
    needed = rows * columns * samples * frames * bits // 8
    held = len(dataset.PixelData)
    if held < needed:
        raise ImageError(f"This DICOM file is cut short: it holds {held:,} of the {needed:,} bytes its image needs; copy or export it again.")


def xray_warnings(image: Image.Image) -> list[str]:
    """Plain-words warnings when `image` does not look like a radiograph (colour, or a mostly white page).
    A hand-written heuristic: radiographs are grey and mostly dark-to-mid toned."""
    small = np.asarray(image.convert("RGB").resize((128, 128)), dtype=np.float64)
    red, green, blue = small[..., 0], small[..., 1], small[..., 2]
    rg, yb = red - green, 0.5 * (red + green) - blue
    colourfulness = np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())
    notes = []
    if colourfulness > 15:
        notes.append("This looks like a colour photo, not a chest X-ray: the result below is meaningless for it.")
    if (small.mean(axis=2) > 235).mean() > 0.6:
        notes.append("This looks like a document or a mostly blank image, not a chest X-ray: the result below is meaningless for it.")
    return notes
