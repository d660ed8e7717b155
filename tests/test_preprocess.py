"""gateway.preprocess: every kind of upload, every awkward encoding, every bad file."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from gateway import preprocess
from gateway.errors import GatewayError, InvalidInput, PayloadTooLarge, UnsupportedMediaType
from gateway.preprocess import Preprocessed, sniff_format, to_mnist
from tests import uploads


@pytest.fixture(scope="module")
def mnist(mnist_dir):
    from training.data import load_mnist

    data = load_mnist(mnist_dir)
    return data.test_images[:200], data.test_labels[:200]


@pytest.fixture(scope="module")
def mnist_all(mnist_dir):
    from training.data import load_mnist

    data = load_mnist(mnist_dir)
    return np.concatenate([data.test_images, data.train_images])


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two 28x28 images: 1 for the same picture, ~0 for unrelated ones."""
    return float(np.corrcoef(a.astype(np.float64).ravel(), b.astype(np.float64).ravel())[0, 1])


def shift_tolerant_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """`similarity` after a 3x3 box blur of both: forgives the one-pixel shift that alone takes a thin
    stroke (a "1") below 0.6, so a whole batch of real digits can be held to a tight bar."""

    def blurred(image: np.ndarray) -> np.ndarray:
        padded = np.pad(image.astype(np.float64), 1)
        return sum(padded[dy : dy + 28, dx : dx + 28] for dy in range(3) for dx in range(3))

    return similarity(blurred(a), blurred(b))


def test_an_mnist_image_goes_through_unchanged(mnist):
    digits, _ = mnist
    unchanged = 0
    for digit in digits:
        out = to_mnist(uploads.mnist_png(digit, None)).image
        assert out.dtype == np.uint8 and out.shape == (28, 28)
        if np.array_equal(out, digit):
            unchanged += 1
        else:  # at most a whole-pixel recentring: the same pixels, moved
            assert any(
                np.array_equal(out, np.roll(digit, (dy, dx), axis=(0, 1)))
                for dy in (-1, 0, 1)
                for dx in (-1, 0, 1)
            )
    assert unchanged >= 0.95 * len(digits)


def grey_28x28_variants(digit: np.ndarray) -> dict[str, np.ndarray]:
    """MNIST-style, dark on light, off-centre and too big for 20x20: every branch after decoding."""
    return {
        "mnist": digit,
        "inverted": 255 - digit,
        "off_centre": np.roll(digit, (5, -6), axis=(0, 1)),
        "too_big": np.asarray(Image.fromarray(digit).resize((40, 40)))[6:34, 6:34],
    }


def test_a_grey_28x28_upload_skips_the_resampling(mnist, monkeypatch):
    calls = []
    reduced = preprocess._reduced
    monkeypatch.setattr(preprocess, "_reduced", lambda *a, **k: calls.append(a) or reduced(*a, **k))
    for variant in grey_28x28_variants(mnist[0][0]).values():
        to_mnist(uploads.encode(Image.fromarray(variant, "L")))
    assert calls == []
    to_mnist(uploads.encode(Image.fromarray(mnist[0][0], "L").convert("RGB")))  # not grey: the full path
    assert len(calls) == 1


def test_the_grey_28x28_quick_path_gives_what_the_full_path_gives(mnist_all):
    """On every committed sample image: a grey PNG (quick path) and the same pixels as an RGB PNG (the full
    path: converted, resampled, collapsed to grey) give the same input, or the same error."""
    for digit in mnist_all:
        for name, variant in grey_28x28_variants(digit).items():
            grey = Image.fromarray(variant, "L")
            assert outcome(grey) == outcome(grey.convert("RGB")), name


def outcome(image: Image.Image) -> tuple[str, bytes | str]:
    try:
        out = to_mnist(uploads.encode(image)).image
    except InvalidInput as exc:
        return "error", exc.message
    assert out.dtype == np.uint8 and out.shape == (28, 28)
    return "ok", out.tobytes()


@pytest.mark.parametrize("kind", list(uploads.KINDS))
def test_each_kind_of_upload_becomes_the_mnist_digit(mnist, kind):
    digits, _ = mnist
    # A few MNIST digits are cut by the edge (off their own centre of mass): not a fair reference.
    framed = [d for d in digits if d[:2].max() == d[-2:].max() == d[:, :2].max() == d[:, -2:].max() == 0]
    rng = np.random.default_rng(7)
    scores = []
    for digit in framed[:40]:
        data = uploads.make_upload(kind, digit, rng)
        out = to_mnist(data)
        assert isinstance(out, Preprocessed)
        assert out.image.dtype == np.uint8 and out.image.shape == (28, 28)
        assert out.inverted == (kind != "mnist_png")  # every other kind is dark ink on a light ground
        frame = out.image.astype(np.float64)
        frame[2:-2, 2:-2] = 0
        assert frame.sum() < 0.06 * out.image.sum()  # a (nearly) black frame, like MNIST
        scores.append(shift_tolerant_similarity(out.image, digit))
    assert np.median(scores) > 0.93, scores
    assert min(scores) > 0.7, scores


def test_upload_metadata(mnist):
    digit = mnist[0][0]
    data = uploads.canvas(digit, np.random.default_rng(0))
    out = to_mnist(data)
    width, height = Image.open(io.BytesIO(data)).size
    assert (out.sha256, out.format, out.width, out.height) == (
        hashlib.sha256(data).hexdigest(),
        "PNG",
        width,
        height,
    )
    assert out.mode == "RGB"


def test_a_big_jpeg_reports_its_own_size_though_decoded_smaller(mnist):
    """Big JPEGs are decoded at a fraction of their size (draft); the metadata still says what was sent,
    as displayed (EXIF quarter turn applied)."""
    big = Image.fromarray(mnist[0][3], "L").resize((1700, 900))
    out = to_mnist(uploads.encode(big, "JPEG", quality=90))
    assert (out.width, out.height) == (1700, 900)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed portrait
    out = to_mnist(uploads.encode(big, "JPEG", quality=90, exif=exif.tobytes()))
    assert (out.width, out.height) == (900, 1700)


@pytest.mark.parametrize("name", list(uploads.EDGE_CASES))
def test_awkward_encodings_are_read_correctly(mnist, name):
    digit = mnist[0][1]  # a 2: asymmetric, so a missed EXIF rotation or a flip shows
    out = to_mnist(uploads.EDGE_CASES[name](digit))
    assert similarity(out.image, digit) > 0.8
    assert similarity(out.image, np.rot90(digit)) < 0.5


def test_details_of_awkward_encodings(mnist):
    digit = mnist[0][1]
    gif = to_mnist(uploads.animated_gif(digit))
    assert gif.format == "GIF"
    assert to_mnist(uploads.png16(digit)).mode == "I;16"
    assert to_mnist(uploads.cmyk_jpeg(digit)).mode == "CMYK"
    assert to_mnist(uploads.palette_transparent_png(digit)).mode == "P"
    rotated = to_mnist(uploads.exif_rotated_jpeg(digit))
    stored = Image.open(io.BytesIO(uploads.exif_rotated_jpeg(digit))).size
    assert (rotated.width, rotated.height) == (stored[1], stored[0])  # dimensions as displayed
    assert not to_mnist(uploads.white_on_transparent_canvas(digit)).inverted
    assert not to_mnist(uploads.light_on_dark_photo(digit)).inverted


@pytest.mark.parametrize("name", list(uploads.BAD_UPLOADS))
def test_bad_uploads_get_a_clear_client_error(name):
    data, expected = uploads.BAD_UPLOADS[name]()
    with pytest.raises(expected) as info:
        to_mnist(data)
    assert 400 <= info.value.status < 500
    assert info.value.message and "Traceback" not in info.value.message


def test_the_pixel_limit_is_checked_before_decoding(mnist):
    data = uploads.canvas(mnist[0][0], np.random.default_rng(0))
    width, height = Image.open(io.BytesIO(data)).size
    with pytest.raises(PayloadTooLarge, match="limit"):
        to_mnist(data, max_pixels=width * height - 1)
    assert to_mnist(data, max_pixels=width * height).image.shape == (28, 28)


def test_pillow_decompression_bomb_guard_stays_on():
    assert Image.MAX_IMAGE_PIXELS is not None
    with pytest.raises(PayloadTooLarge):
        to_mnist(uploads.png_header_only(40_000, 40_000), max_pixels=10**10)


@pytest.mark.parametrize(
    "data, fmt",
    [
        (b"\x89PNG\r\n\x1a\n....", "PNG"),
        (b"\xff\xd8\xff\xe0", "JPEG"),
        (b"GIF89a", "GIF"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "WEBP"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", None),
        (b"II*\x00", "TIFF"),
        (b"<svg", None),
    ],
)
def test_sniff_format(data, fmt):
    assert sniff_format(data) == fmt


def test_specks_far_from_the_digit_do_not_move_the_crop(mnist):
    digit = mnist[0][4]
    canvas = np.full((400, 400), 250, dtype=np.uint8)
    canvas[100:300, 100:300] = np.asarray(
        Image.fromarray(255 - digit).resize((200, 200), Image.Resampling.BICUBIC)
    )
    rng = np.random.default_rng(3)
    for y, x in rng.integers(0, 400, size=(12, 2)):
        if not (80 < y < 320 and 80 < x < 320):
            canvas[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2] = 0
    out = to_mnist(uploads.encode(Image.fromarray(canvas, "L")))
    assert similarity(out.image, digit) > 0.85


def test_mangled_files_never_escape_as_anything_but_a_client_error(mnist):
    """Truncations and bit flips of real uploads: a prediction or a GatewayError, nothing else."""
    rng = np.random.default_rng(11)
    originals = [uploads.make_upload(kind, mnist[0][5], rng) for kind in ("canvas", "jpeg", "photo")]
    originals += [uploads.animated_gif(mnist[0][5]), uploads.tiff(mnist[0][5]), uploads.webp(mnist[0][5])]
    outcomes = {"ok": 0, "error": 0}
    for data in originals:
        for _ in range(25):
            mangled = bytearray(data)
            if rng.random() < 0.5:
                mangled = mangled[: int(rng.integers(1, len(mangled)))]
            else:
                for pos in rng.integers(0, len(mangled), size=int(rng.integers(1, 20))):
                    mangled[pos] = int(rng.integers(0, 256))
            try:
                to_mnist(bytes(mangled))
                outcomes["ok"] += 1
            except GatewayError as exc:
                assert isinstance(exc, InvalidInput | UnsupportedMediaType | PayloadTooLarge)
                outcomes["error"] += 1
    assert outcomes["error"] > 0
