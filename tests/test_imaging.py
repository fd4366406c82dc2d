"""Every odd upload either becomes the same clean RGB image or a clear ImageError."""

import io
import struct
import zlib

import numpy as np
import pytest
from conftest import compressed_dicom, dicom_bytes, dicom_dataset, make_dicom, xray_like
from PIL import Image

from pneumo_hf.examples import find_examples
from pneumo_hf.imaging import MAX_FILE_BYTES, ImageError, load_image, xray_warnings

GREY = xray_like(0, (64, 48))


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def grey_of(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image.convert("L"), dtype=np.int16)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "WEBP"])
def test_lossless_formats_give_the_same_pixels(fmt):
    kwargs = {"lossless": True} if fmt == "WEBP" else {}
    assert np.array_equal(grey_of(load_image(encode(Image.fromarray(GREY), fmt, **kwargs))), GREY)


def test_jpeg_path_and_pil_and_array_agree(tmp_path):
    path = tmp_path / "x.jpeg"
    Image.fromarray(GREY).save(path, quality=95)
    from_path = grey_of(load_image(path))
    assert np.array_equal(from_path, grey_of(load_image(path.read_bytes())))
    assert np.array_equal(from_path, grey_of(load_image(Image.open(path))))
    assert np.abs(from_path - GREY).mean() < 3


def test_16_bit_png_matches_8_bit():
    sixteen = Image.fromarray(GREY.astype(np.uint16) * 257)
    assert np.array_equal(grey_of(load_image(encode(sixteen, "PNG"))), GREY)


def test_12_bit_array_scales_to_full_range():
    image = load_image(GREY.astype(np.uint16) * 16)  # 12-bit data stored in uint16
    assert np.abs(grey_of(image) - GREY).max() <= 1


def test_float_array_in_unit_range():
    assert np.abs(grey_of(load_image(GREY / 255.0)) - GREY).max() <= 1


def test_palette_rgba_and_cmyk():
    palette = Image.fromarray(GREY).convert("P")
    assert np.abs(grey_of(load_image(encode(palette, "PNG"))) - GREY).max() <= 2
    rgba = Image.fromarray(GREY).convert("RGBA")
    assert np.array_equal(grey_of(load_image(encode(rgba, "PNG"))), GREY)
    cmyk = Image.fromarray(GREY).convert("RGB").convert("CMYK")
    assert np.abs(grey_of(load_image(encode(cmyk, "JPEG", quality=95))) - GREY).mean() < 4


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    image = load_image(encode(Image.fromarray(GREY), "JPEG", exif=exif, quality=95))
    assert image.size == (GREY.shape[0], GREY.shape[1])
    assert np.abs(grey_of(image) - np.rot90(GREY, k=-1)).mean() < 3


def test_animated_gif_takes_first_frame():
    frames = [Image.fromarray(GREY), Image.fromarray(255 - GREY)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert np.abs(grey_of(load_image(data)) - GREY).max() <= 8


def test_dicom_monochrome2_and_monochrome1_and_rescale():
    plain = grey_of(load_image(make_dicom(GREY)))
    assert np.abs(plain - (GREY - GREY.min()) * 255.0 / (GREY.max() - GREY.min())).max() <= 1
    inverted = grey_of(load_image(make_dicom(255 - GREY, photometric="MONOCHROME1")))
    assert np.abs(inverted - plain).max() <= 1
    rescaled = grey_of(load_image(make_dicom(GREY.astype(np.uint16) * 16, slope=0.5, intercept=-1024)))
    assert np.abs(rescaled - plain).max() <= 1


def test_dicom_by_extension_without_preamble(tmp_path):
    path = tmp_path / "scan.dcm"
    path.write_bytes(make_dicom(GREY))
    assert load_image(path).size == (GREY.shape[1], GREY.shape[0])


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"hello, this is text\n" * 20, "not an image"),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n", "not an image"),
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "not an image"),
        (b"PK\x03\x04" + b"\0" * 100, "not an image"),
    ],
)
def test_non_images_are_refused(data, message):
    with pytest.raises(ImageError, match=message):
        load_image(data)


def test_truncated_jpeg_is_refused():
    data = encode(Image.fromarray(xray_like(1, (256, 256))), "JPEG")
    with pytest.raises(ImageError, match="damaged or truncated"):
        load_image(data[: len(data) // 3])


def test_dicom_without_pixels_is_refused():
    with pytest.raises(ImageError, match="no image"):
        load_image(make_dicom(GREY, with_pixels=False))


def raw_dicom(implicit_vr: bool) -> bytes:
    """A data set written without the 128-byte preamble and file meta, as older modalities write it."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    dataset = dicom_dataset(GREY)
    del dataset.file_meta
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, implicit_vr
    write_dataset(buffer, dataset)
    return buffer.getvalue()


@pytest.mark.parametrize("implicit_vr", [True, False], ids=["implicit_vr", "explicit_vr"])
def test_dicom_without_preamble_and_file_meta_is_read_as_the_film(tmp_path, implicit_vr):
    path = tmp_path / "old_modality.dcm"
    path.write_bytes(raw_dicom(implicit_vr))
    assert np.array_equal(np.asarray(load_image(path).convert("L")), np.asarray(load_image(make_dicom(GREY)).convert("L")))


def test_compressed_garbage_named_dcm_is_not_a_dicom_file(tmp_path):
    path = tmp_path / "scan.dcm"
    path.write_bytes(zlib.compress(np.random.default_rng(0).bytes(5000)))
    with pytest.raises(ImageError, match="named like a DICOM file but is not one"):
        load_image(path)


def test_a_jpeg_named_dcm_is_read_as_the_jpeg(tmp_path):
    path = tmp_path / "scan.dcm"
    path.write_bytes(encode(Image.fromarray(GREY), "PNG"))
    assert np.array_equal(np.asarray(load_image(path).convert("L")), GREY)


def test_dicom_cut_short_says_so_in_plain_words():
    data = make_dicom(GREY)
    with pytest.raises(ImageError, match=r"cut short: it holds [\d,]+ of the [\d,]+ bytes its image needs") as caught:
        load_image(data[:-500])
    assert "0028" not in str(caught.value) and "dataset" not in str(caught.value)


@pytest.mark.parametrize("rows, columns", [(0, GREY.shape[1]), (GREY.shape[0], 0)])
def test_zero_size_dicom_image_says_it_holds_no_picture(rows, columns):
    dataset = dicom_dataset(GREY)
    dataset.Rows, dataset.Columns = rows, columns
    with pytest.raises(ImageError, match="holds no picture") as caught:
        load_image(dicom_bytes(dataset))
    assert "(0028," not in str(caught.value)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding():
    with pytest.raises(ImageError, match="pixel"):
        load_image(png_claiming(100_000, 100_000))


def test_oversized_file_and_tiny_image_are_refused(tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (MAX_FILE_BYTES + 1))
    with pytest.raises(ImageError, match="MB limit"):
        load_image(big)
    with pytest.raises(ImageError, match="at least"):
        load_image(encode(Image.new("L", (1, 1)), "PNG"))


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(ImageError, match="No file"):
        load_image(tmp_path / "nope.png")


def test_warnings_for_colour_photos_and_documents_not_xrays():
    assert xray_warnings(load_image(GREY)) == []
    rng = np.random.default_rng(0)
    colour = np.zeros((64, 64, 3), np.uint8)
    colour[..., 0], colour[..., 1], colour[..., 2] = 200, rng.integers(0, 255, (64, 64)), 30
    assert "colour photo" in xray_warnings(load_image(colour))[0]
    page = np.full((64, 64), 250, np.uint8)
    page[10:12, 5:60] = 0
    assert "document" in xray_warnings(load_image(page))[0]


@pytest.fixture(scope="module")
def real_film() -> np.ndarray:
    """A real chest film (the first example film), grey uint8."""
    return np.asarray(Image.open(find_examples()[0][0]).convert("L"))


LOSSLESS = ["RLELossless", "JPEGLosslessSV1", "JPEGLossless", "JPEGLSLossless", "JPEG2000Lossless"]


@pytest.fixture(scope="module")
def default_predictor():
    from pneumo_hf import load_predictor

    return load_predictor()


@pytest.mark.parametrize("syntax", LOSSLESS)
def test_compressed_dicom_as_pacs_export_it_predicts_like_the_uncompressed_film(syntax, default_predictor, real_film):
    from pydicom import uid

    film = real_film.astype(np.uint16) * 16 + 7  # 12-bit, as a CR exports it
    data = compressed_dicom(film, getattr(uid, syntax))
    plain = make_dicom(film)
    assert np.array_equal(grey_of(load_image(data)), grey_of(load_image(plain)))
    assert default_predictor.predict(data).probabilities == default_predictor.predict(plain).probabilities


@pytest.mark.parametrize("syntax, scale", [("JPEGBaseline8Bit", 1), ("JPEGExtended12Bit", 16)])
def test_lossy_jpeg_dicom_predicts_close_to_the_uncompressed_film(syntax, scale, default_predictor, real_film):
    from pydicom import uid

    film = real_film if scale == 1 else real_film.astype(np.uint16) * scale

    data = compressed_dicom(film, getattr(uid, syntax))
    assert np.abs(grey_of(load_image(data)) - grey_of(load_image(make_dicom(film)))).mean() < 2
    pneumonia = [default_predictor.predict(source).probabilities["PNEUMONIA"] for source in (data, make_dicom(film))]
    assert abs(pneumonia[0] - pneumonia[1]) < 0.02


def test_undecodable_dicom_names_its_transfer_syntax():
    from pydicom import uid
    from pydicom.encaps import encapsulate

    dataset = dicom_dataset(GREY)
    dataset.PixelData = encapsulate([b"\0" * 64])
    dataset["PixelData"].VR = "OB"
    dataset.file_meta.TransferSyntaxUID = uid.MPEG2MPML
    with pytest.raises(ImageError, match=r"MPEG2.*1\.2\.840\.10008\.1\.2\.4\.100"):
        load_image(dicom_bytes(dataset))


def test_dicom_display_pipeline_step_by_step():
    """Modality LUT, VOI window, presentation LUT shape and MONOCHROME1, in the standard's order (issue 41)."""
    plain = grey_of(load_image(make_dicom(GREY)))
    # the modality step: stored values 4x + 100 through RescaleSlope 0.25, RescaleIntercept -25 are the film again
    assert np.abs(grey_of(load_image(make_dicom(GREY.astype(np.uint16) * 4 + 100, slope=0.25, intercept=-25))) - plain).max() <= 1
    # the VOI step: a window over the darker half of the values saturates the brighter half to white
    windowed = dicom_dataset(GREY)
    windowed.WindowCenter, windowed.WindowWidth = float(np.median(GREY)) / 2, float(np.median(GREY))
    shown = grey_of(load_image(dicom_bytes(windowed)))
    assert (shown[GREY > np.median(GREY)] >= 250).all() and shown.min() <= 5
    # the presentation step: a MONOCHROME2 film whose Presentation LUT Shape is INVERSE is shown as its negative
    inverse = dicom_dataset(GREY)
    inverse.PresentationLUTShape = "INVERSE"
    assert np.abs(grey_of(load_image(dicom_bytes(inverse))) - (255 - plain)).max() <= 1
    # MONOCHROME1 is turned over once: by its photometric interpretation, or by the INVERSE shape DX films carry
    for shape in (None, "INVERSE", "IDENTITY"):
        monochrome1 = dicom_dataset(255 - GREY, photometric="MONOCHROME1")
        if shape:
            monochrome1.PresentationLUTShape = shape
        assert np.abs(grey_of(load_image(dicom_bytes(monochrome1))) - plain).max() <= 1, shape


def test_max_side_reduces_as_it_decodes_and_keeps_the_picture():
    big = np.kron(GREY, np.ones((40, 40), np.uint8))  # 2,560 x 1,920
    for data in (encode(Image.fromarray(big), "PNG"), encode(Image.fromarray(big), "JPEG", quality=95), make_dicom(big.astype(np.uint16) * 16)):
        image = load_image(data, max_side=512)
        assert max(image.size) <= 512 and image.size[0] / image.size[1] == pytest.approx(48 / 64, rel=0.02)
        small = np.asarray(image.convert("L").resize((48, 64), Image.BILINEAR), dtype=np.int16)
        reference = np.asarray(load_image(data).convert("L").resize((48, 64), Image.BILINEAR), dtype=np.int16)
        assert np.abs(small - reference).mean() < 3
    assert load_image(encode(Image.fromarray(GREY), "PNG"), max_side=512).size == (48, 64)  # small films unchanged
