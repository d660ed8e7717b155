"""Turn an uploaded picture of a digit into the model's input, the way MNIST itself was made.

    to_mnist(data) -> Preprocessed(image=uint8 [28, 28] white digit on black, ...)

Decoding is strict: only real raster images (PNG, JPEG, GIF, BMP, WebP, TIFF) recognised by their
signature, a pixel-count limit checked from the header before any pixel is decoded (and Pillow's own
decompression-bomb guard left on), EXIF orientation applied, the first frame of an animation, every Pillow
mode (palette, 16-bit, CMYK, alpha...) flattened to grey (transparency composited on white).

Then the MNIST recipe (docs/preprocessing.md), on the picture box-reduced to ANALYSIS_SIZE so its cost
hardly depends on the upload's size (a small digit on a big picture gets a second look at a crop of the
full-size picture): find the ink (dark on light is inverted), remove uneven lighting on large pictures,
threshold (Otsu) to find the digit and drop specks, crop to the digit's box, scale it to fit 20x20 keeping
its aspect ratio with anti-aliasing, and centre it by mass in 28x28. A
picture that already is an MNIST-style 28x28 goes through unchanged apart from a whole-pixel recentring.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from gateway import imaging
from gateway.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType

DEFAULT_MAX_PIXELS = 25_000_000  # a 24 MP phone photo passes; far below Pillow's own bomb limit (89 MP)
DECODE_SIZE = 400  # big JPEGs are decoded at 1/2, 1/4 or 1/8 scale, down to no less than this (long side)
# The analysis (lighting, threshold, components, box) runs on the picture reduced to this long side, so its
# cost hardly depends on the upload's size. A digit is fitted to 20x20 in the end: at this size strokes
# drawn on a canvas are still several pixels wide.
ANALYSIS_SIZE = 128
# A digit whose box came out smaller than this at analysis size (a small digit on a big canvas) is looked
# at again: its neighbourhood is cropped from the full-size picture and analysed on its own.
REFINE_BELOW = 40
LARGE = 64  # pictures at least this big (short side) get the uneven-light treatment
MIN_CONTRAST = 24.0  # ink that stands out less than this (0..255) from the background: a blank picture

# Signatures of the formats we read (anything else, SVG and text included, is 415).
_SIGNATURES: tuple[tuple[str, bytes, int], ...] = (
    ("PNG", b"\x89PNG\r\n\x1a\n", 0),
    ("JPEG", b"\xff\xd8\xff", 0),
    ("GIF", b"GIF87a", 0),
    ("GIF", b"GIF89a", 0),
    ("BMP", b"BM", 0),
    ("WEBP", b"WEBP", 8),  # RIFF....WEBP
    ("TIFF", b"II*\x00", 0),
    ("TIFF", b"MM\x00*", 0),
)
SUPPORTED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
)


@dataclass(frozen=True)
class Preprocessed:
    image: np.ndarray  # uint8 [28, 28], white digit on black: what the model sees
    sha256: str  # of the uploaded bytes
    format: str  # PNG, JPEG, GIF, BMP, WEBP or TIFF
    width: int  # of the upload, after EXIF rotation
    height: int
    mode: str  # Pillow's mode of the upload (RGB, RGBA, P, L, I;16, CMYK, ...)
    frames: int  # > 1 for an animation: only the first frame is used
    inverted: bool  # dark ink on a light background was found (and turned into white on black)


def sniff_format(data: bytes) -> str | None:
    """The image format by its signature, or None when the bytes are not one we read."""
    for name, signature, offset in _SIGNATURES:
        if data[offset : offset + len(signature)] == signature:
            if name == "WEBP" and not data.startswith(b"RIFF"):
                continue
            return name
    return None


def to_mnist(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Preprocessed:
    """The MNIST-style 28x28 input for an uploaded picture; raises InvalidInput, UnsupportedMediaType or
    PayloadTooLarge with a message fit for the client."""
    if not data:
        raise InvalidInput("the upload is empty")
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedMediaType("not a supported image: send a PNG, JPEG, GIF, BMP, WebP or TIFF picture")
    image, frames, mode, (width, height) = _decode(data, fmt, max_pixels)
    image = _normalised(image)
    pixels, backdrop = _pixels(image)
    if (width, height) == (imaging.MNIST_SIZE,) * 2:
        ink, inverted = imaging.ink_map(pixels)
        digit = _already_mnist(ink)
        if digit is None:
            digit = _extract_digit(ink, smooth_radius=0)[0]
    else:
        digit, inverted, box = _find_digit(pixels, large=min(width, height) >= LARGE)
        region = _refine_region(box, pixels.shape, image.size)
        if region is not None:
            crop = image.crop(region)
            pixels, _ = _pixels(crop, backdrop=backdrop)
            digit, inverted, _ = _find_digit(pixels, large=min(crop.size) >= LARGE)
    return Preprocessed(
        image=imaging.to_uint8(digit),
        sha256=hashlib.sha256(data).hexdigest(),
        format=fmt,
        width=width,
        height=height,
        mode=mode,
        frames=frames,
        inverted=inverted,
    )


def _decode(data: bytes, fmt: str, max_pixels: int) -> tuple[Image.Image, int, str, tuple[int, int]]:
    """Open, check the size from the header, decode the first frame, apply EXIF orientation. Also returns
    the upload's size as displayed (a big JPEG is decoded smaller than it is)."""
    try:
        image = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError:
        raise PayloadTooLarge("the image has too many pixels") from None
    except (UnidentifiedImageError, *_DECODE_ERRORS):
        raise InvalidInput(f"the {fmt} image is corrupt or truncated") from None
    if image.width < 1 or image.height < 1:
        raise InvalidInput("the image has no pixels")
    if image.width * image.height > max_pixels:
        raise PayloadTooLarge(
            f"the image is {image.width}x{image.height} pixels; the limit is {max_pixels:,} pixels"
        )
    mode = image.mode
    size = image.size
    frames = getattr(image, "n_frames", 1)
    try:
        if frames > 1:
            image.seek(0)
        if fmt == "JPEG" and max(image.size) > 2 * DECODE_SIZE:
            # Let the JPEG decoder downscale by 1/2, 1/4 or 1/8: big photos decode several times faster.
            scale = DECODE_SIZE / max(image.size)
            image.draft(None, (int(image.width * scale) + 1, int(image.height * scale) + 1))
        image.load()
        decoded = image.size
        image = ImageOps.exif_transpose(image)
        if image.size != decoded:  # rotated by a quarter turn
            size = size[::-1]
    except Image.DecompressionBombError:
        raise PayloadTooLarge("the image has too many pixels") from None
    except _DECODE_ERRORS:
        raise InvalidInput(f"the {fmt} image is corrupt or truncated") from None
    return image, frames, mode, size


def _normalised(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> L, RGB or RGBA (16-bit and float scaled to 8 bits, palettes and transparency
    to RGBA)."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float32)
        if image.mode.startswith("I;16") or values.max() > 255:
            values = values / 257.0  # 16-bit range to 8-bit
        elif image.mode == "F" and values.max() <= 1.0:
            values = values * 255.0
        return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), "L")
    if image.mode == "1":
        return image.convert("L")
    if image.mode in ("P", "PA", "LA", "La", "RGBa") or "transparency" in image.info:
        return image.convert("RGBA")
    if image.mode not in ("L", "RGB", "RGBA"):
        return image.convert("RGB")  # CMYK, YCbCr, LAB, HSV
    return image


def _pixels(image: Image.Image, *, backdrop: float | None = None) -> tuple[np.ndarray, float | None]:
    """An L/RGB/RGBA image reduced to ANALYSIS_SIZE on its long side (box filter: every source pixel
    counts, so thin strokes fade but never vanish) -> float32 grey [H, W] or RGB [H, W, 3] on 0..255 with
    transparency flattened onto `backdrop` (chosen from the picture when None), and the backdrop used."""
    if max(image.size) > ANALYSIS_SIZE:
        scale = ANALYSIS_SIZE / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BOX, reducing_gap=2.0)
    values = np.asarray(image, dtype=np.float32)
    if image.mode == "RGBA":
        if backdrop is None:
            backdrop = imaging.backdrop(values[..., :3], values[..., 3])
        values = imaging.composite(values[..., :3], values[..., 3], backdrop)
    if (
        values.ndim == 3
        and np.array_equal(values[..., 0], values[..., 1])
        and np.array_equal(values[..., 1], values[..., 2])
    ):
        values = values[..., 0]  # grey stored as RGB
    return values, backdrop


def _find_digit(pixels: np.ndarray, *, large: bool) -> tuple[np.ndarray, bool, tuple[int, int, int, int]]:
    """(the digit fitted in 28x28, whether the picture was dark on light, the digit's box in `pixels`)."""
    # A sliver (a very wide or tall picture) has too few rows or columns to fit the lighting to.
    if large and min(pixels.shape[:2]) >= LARGE // 2:
        ink, inverted = imaging.lit_ink_map(pixels)
        digit, box = _extract_digit(ink, smooth_radius=1)
    else:
        ink, inverted = imaging.ink_map(pixels)
        digit, box = _extract_digit(ink, smooth_radius=0)
    return digit, inverted, box


def _refine_region(
    box: tuple[int, int, int, int], shape: tuple[int, ...], size: tuple[int, int]
) -> tuple[int, int, int, int] | None:
    """The part of the full picture (left, top, right, bottom) to analyse again when the digit found at
    analysis size is too small to fit well, else None. Half the digit's size around it comes along, so the
    crop's border is the paper around the digit."""
    top, bottom, left, right = box
    extent = max(bottom - top, right - left)
    scale = size[0] / shape[1]
    if extent >= REFINE_BELOW or scale <= 1.0:
        return None
    margin = extent / 2 + 1
    return (
        max(0, int((left - margin) * scale)),
        max(0, int((top - margin) * scale)),
        min(size[0], int(np.ceil((right + margin) * scale))),
        min(size[1], int(np.ceil((bottom + margin) * scale))),
    )


def _already_mnist(ink: np.ndarray) -> np.ndarray | None:
    """An MNIST-style 28x28 (black background, the digit within 20x20) moved by whole pixels so its centre
    of mass is MNIST's, else None. MNIST's own images are already there, so they come out unchanged."""
    if float(ink.max()) < 2 * MIN_CONTRAST:
        return None
    box = imaging.bounding_box(ink > 0)
    if box is None:
        return None
    top, bottom, left, right = box
    if bottom - top > imaging.MNIST_BOX or right - left > imaging.MNIST_BOX:
        return None
    total = float(ink.sum())
    rows, cols = np.arange(ink.shape[0]), np.arange(ink.shape[1])
    dy = round(imaging.MNIST_CENTRE - float(ink.sum(axis=1) @ rows) / total)
    dx = round(imaging.MNIST_CENTRE - float(ink.sum(axis=0) @ cols) / total)
    dy = min(max(dy, -top), ink.shape[0] - bottom)  # never push ink out of the field
    dx = min(max(dx, -left), ink.shape[1] - right)
    field = np.zeros_like(ink)
    field[top + dy : bottom + dy, left + dx : right + dx] = ink[top:bottom, left:right]
    return field


def _extract_digit(ink: np.ndarray, *, smooth_radius: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    smoothed = imaging.smooth(ink, smooth_radius)
    if imaging.quantile(smoothed, 0.9995) < MIN_CONTRAST:
        raise InvalidInput("no digit found: the picture looks blank")
    mask = imaging.digit_mask(smoothed > imaging.otsu_threshold(smoothed))
    box = imaging.bounding_box(mask)
    if box is None:
        raise InvalidInput("no digit found: the picture looks blank")
    # Contrast as in MNIST: background noise to black, the ink's core to full white.
    background = ink[~mask]
    floor = 0.0
    if background.size:
        level = imaging.quantile(background, 0.5)
        floor = level + 3 * imaging.quantile(np.abs(background - level), 0.5)
    core = imaging.quantile(ink[mask], 0.9)
    if core <= floor + MIN_CONTRAST / 2:
        raise InvalidInput("no digit found: the picture looks blank")
    scaled = np.clip((ink - floor) * (255.0 / (core - floor)), 0, 255)
    return imaging.centre_by_mass(imaging.fit_box(scaled, box)), box
