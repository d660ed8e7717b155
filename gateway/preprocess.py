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

import contextlib
import hashlib
import io
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from gateway import imaging
from gateway.errors import ImageTooLarge, InvalidInput, Overloaded, PayloadTooLarge, UnsupportedMediaType

DEFAULT_MAX_PIXELS = 25_000_000  # a 24 MP phone photo passes; far below Pillow's own bomb limit (89 MP)
# Memory one decoding may take (the decoded first frame in Pillow's storage for its mode, plus what its
# decoder holds beside it): a 16 MP RGB(A) PNG, a 32 MP 16-bit grey PNG, a 64 MP grey one. JPEGs are
# drafted to about DECODE_SIZE while decoding, so phone photos cost a few MiB.
DEFAULT_MAX_DECODE_BYTES = 64 * 2**20
# CPU time (of the request's thread) decoding may take: a walk through millions of PNG chunks, JPEG markers,
# GIF blocks or TIFF strips stops here. The steps after decoding work on ANALYSIS_SIZE pictures.
DEFAULT_CPU_BUDGET_S = 0.5
MAX_TIFF_STRIPS = 16_384  # Pillow lists a TIFF page's strips in Python when it opens the file
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
# Pillow stores these modes in 1 or 2 bytes a pixel, every other one in 4 (RGB included).
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
# Decoders that hold copies of the frame beside Pillow's: libwebp decodes into a canvas of its own and hands
# Pillow a copy; Pillow's RLE BMP decoder builds the frame in a bytearray and copies it. Three at once.
_DECODE_COPIES = {"WEBP": 3, "bmp_rle": 3}
_BAND_BYTES = 2 * 2**20  # rows converted and reduced at a time (in 4-byte pixels)
_ORIENTATION = 0x0112
_TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_QUARTER_TURNS = {
    Image.Transpose.TRANSPOSE,
    Image.Transpose.ROTATE_270,
    Image.Transpose.TRANSVERSE,
    Image.Transpose.ROTATE_90,
}
_STRIP_OFFSETS, _TILE_OFFSETS = 273, 324
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
    inverted: bool  # dark ink on a light background was found (and turned into white on black)


def sniff_format(data: bytes) -> str | None:
    """The image format by its signature, or None when the bytes are not one we read."""
    for name, signature, offset in _SIGNATURES:
        if data[offset : offset + len(signature)] == signature:
            if name == "WEBP" and not data.startswith(b"RIFF"):
                continue
            return name
    return None


def to_mnist(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES,
    cpu_budget_s: float = DEFAULT_CPU_BUDGET_S,
) -> Preprocessed:
    """The MNIST-style 28x28 input for an uploaded picture; raises InvalidInput, UnsupportedMediaType or
    PayloadTooLarge with a message fit for the client."""
    if not data:
        raise InvalidInput("the upload is empty")
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedMediaType("not a supported image: send a PNG, JPEG, GIF, BMP, WebP or TIFF picture")
    budget = _CpuBudget(cpu_budget_s)
    with contextlib.ExitStack() as held:  # the decoded frame's memory, until the digit is made
        decoded, mode, (width, height) = _decode(data, fmt, max_pixels, max_decode_bytes, budget, held)
        if (width, height) == (imaging.MNIST_SIZE,) * 2:
            pixels = _plain_grey(decoded)
            if pixels is None:
                pixels, _ = _pixels(_reduced(decoded, budget))
            ink, inverted = imaging.ink_map(pixels)
            digit = _already_mnist(ink)
            if digit is None:
                digit = _extract_digit(ink, smooth_radius=0)[0]
        else:
            pixels, backdrop = _pixels(_reduced(decoded, budget))
            digit, inverted, box = _find_digit(pixels, large=min(width, height) >= LARGE)
            region = _refine_region(box, pixels.shape, decoded.size)
            if region is not None:
                crop = _reduced(decoded, budget, region)
                pixels, _ = _pixels(crop, backdrop=backdrop)
                large = min(region[2] - region[0], region[3] - region[1]) >= LARGE
                digit, inverted, _ = _find_digit(pixels, large=large)
    return Preprocessed(
        image=imaging.to_uint8(digit),
        sha256=hashlib.sha256(data).hexdigest(),
        format=fmt,
        width=width,
        height=height,
        mode=mode,
        inverted=inverted,
    )


class DecodingMemory:
    """The memory a process lets decoded pictures take at once. Each decoding holds its cost from the header
    until its digit is made; one that would go over waits for others to finish, and is a 503 after
    `wait_s`. Small pictures (at most `small_bytes`) go straight through: the threads bound those, and an
    ordinary upload never queues behind a big one."""

    def __init__(self, capacity: int, *, small_bytes: int, wait_s: float) -> None:
        self.capacity, self.small_bytes, self.wait_s = capacity, small_bytes, wait_s
        self._free = capacity
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, cost: int) -> Iterator[None]:
        if cost <= self.small_bytes:
            yield
            return
        with self._changed:
            if not self._changed.wait_for(lambda: self._free >= cost, timeout=self.wait_s):
                raise Overloaded("the server is decoding other large pictures; retry shortly", retry_after=1)
            self._free -= cost
        try:
            yield
        finally:
            with self._changed:
                self._free += cost
                self._changed.notify_all()


# Two budget-sized decodings at once per process; pictures up to 4 MiB decoded (a 1 MP RGBA) never wait.
DECODING_MEMORY = DecodingMemory(2 * DEFAULT_MAX_DECODE_BYTES, small_bytes=4 * 2**20, wait_s=2.0)


class _CpuBudget:
    """The CPU time (of this thread) a decoding may still use; `check()` raises once it is spent."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._deadline = time.thread_time() + seconds
        # A thread uses no more CPU than the time that passes: until `seconds` have passed, nothing can be
        # spent, and the monotonic clock is far cheaper to read than this thread's CPU clock.
        self._not_before = time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() < self._not_before:
            return
        if time.thread_time() > self._deadline:
            raise PayloadTooLarge(
                f"the image takes more than {self.seconds:g} s of CPU to decode; send a simpler picture"
            )


class _BudgetedFile(io.BytesIO):
    """The upload as the file Pillow reads. Every walk through a file's structure (PNG chunks, JPEG
    markers, GIF blocks, TIFF strips) and every block fed to a decoder is a read or a seek, so checking
    the budget there stops any of them, however the file is built."""

    def __init__(self, data: bytes, budget: _CpuBudget) -> None:
        super().__init__(data)
        self._budget = budget

    def read(self, size: int | None = -1, /) -> bytes:
        self._budget.check()
        return super().read(size)

    def seek(self, offset: int, whence: int = 0, /) -> int:
        self._budget.check()
        return super().seek(offset, whence)


@dataclass(frozen=True)
class _Decoded:
    """The first frame as decoded (stored orientation; a big JPEG drafted smaller) and how to show it."""

    image: Image.Image
    transpose: Image.Transpose | None  # EXIF orientation, applied to what is cut from `image`
    grey_scale: float  # 16-bit and float pixels times this give 0..255

    @property
    def size(self) -> tuple[int, int]:
        """The decoded size as displayed."""
        w, h = self.image.size
        return (h, w) if self.transpose in _QUARTER_TURNS else (w, h)


def _decode(
    data: bytes, fmt: str, max_pixels: int, max_bytes: int, budget: _CpuBudget, held: contextlib.ExitStack
) -> tuple[_Decoded, str, tuple[int, int]]:
    """Open, check the size and the memory decoding will take from the header, decode the first frame and
    nothing else (never counting frames or pages). Also returns the upload's mode and its size as
    displayed (a big JPEG is decoded smaller than it is)."""
    if fmt == "TIFF" and _tiff_strips(data) > MAX_TIFF_STRIPS:
        raise InvalidInput(f"the TIFF image is cut into more than {MAX_TIFF_STRIPS:,} strips or tiles")
    try:
        image = Image.open(_BudgetedFile(data, budget), formats=[fmt])
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"the image has too many pixels; the limit is {max_pixels:,} pixels") from None
    except (UnidentifiedImageError, *_DECODE_ERRORS):
        raise InvalidInput(f"the {fmt} image is corrupt or truncated") from None
    if image.width < 1 or image.height < 1:
        raise InvalidInput("the image has no pixels")
    if image.width * image.height > max_pixels:
        raise ImageTooLarge(
            f"the image is {image.width}x{image.height} pixels; the limit is {max_pixels:,} pixels"
        )
    mode, size = image.mode, image.size
    try:
        if fmt == "JPEG" and max(image.size) > 2 * DECODE_SIZE:
            # Let the JPEG decoder downscale by 1/2, 1/4 or 1/8: big photos decode several times faster.
            scale = DECODE_SIZE / max(image.size)
            image.draft(None, (int(image.width * scale) + 1, int(image.height * scale) + 1))
        cost = decode_bytes(image, fmt, size)
        if cost > max_bytes:
            raise PayloadTooLarge(
                f"decoding this {size[0]}x{size[1]} {mode} image takes {cost / 2**20:.0f} MiB; "
                f"the limit is {max_bytes / 2**20:.0f} MiB"
            )
        held.enter_context(DECODING_MEMORY.hold(cost))
        image.load()
        transpose = _TRANSPOSES.get(image.getexif().get(_ORIENTATION, 1))
        grey_scale = _grey_scale(image)
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"the image has too many pixels; the limit is {max_pixels:,} pixels") from None
    except _DECODE_ERRORS:
        raise InvalidInput(f"the {fmt} image is corrupt or truncated") from None
    if transpose in _QUARTER_TURNS:
        size = size[::-1]
    return _Decoded(image, transpose, grey_scale), mode, size


def decode_bytes(image: Image.Image, fmt: str, size: tuple[int, int]) -> int:
    """The memory decoding an opened image takes, from its header: the decoded frame in Pillow's storage
    for its mode, the copies some decoders hold beside it, and a progressive JPEG's coefficients (kept at
    full size however small the JPEG is drafted)."""
    decoder = image.tile[0][0] if image.tile else ""
    copies = max(_DECODE_COPIES.get(fmt, 1), _DECODE_COPIES.get(decoder, 1))
    cost = image.width * image.height * _BYTES_PER_PIXEL.get(image.mode, 4) * copies
    if fmt == "JPEG" and image.info.get("progressive"):
        layers = getattr(image, "layer", None) or [("", 1, 1, 0)] * len(image.getbands())
        h_max = max(layer[1] for layer in layers)
        v_max = max(layer[2] for layer in layers)
        area = sum(layer[1] * layer[2] for layer in layers) / (h_max * v_max)
        cost += int(size[0] * size[1] * area * 2)  # 16-bit coefficients per sample
    return cost


def _tiff_strips(data: bytes) -> int:
    """How many strips or tiles the first page of a TIFF has, from its first directory (0 if unreadable:
    Pillow then says what is wrong). Pillow lists them all when it opens the file."""
    order = "<" if data[:2] == b"II" else ">"
    try:
        (offset,) = struct.unpack_from(order + "I", data, 4)
        (entries,) = struct.unpack_from(order + "H", data, offset)
        for i in range(entries):
            tag, _, count = struct.unpack_from(order + "HHI", data, offset + 2 + 12 * i)
            if tag in (_STRIP_OFFSETS, _TILE_OFFSETS):
                return count
    except struct.error:
        return 0
    return 0


def _grey_scale(image: Image.Image) -> float:
    """What 16-bit, 32-bit and float pixels are multiplied by to land on 0..255 (decided on the whole
    picture, so that every band of it is scaled alike)."""
    if image.mode.startswith("I;16"):
        return 1 / 257
    if image.mode not in ("I", "F"):
        return 1.0
    low, high = image.getextrema()
    if high > 255:
        return 1 / 257
    return 255.0 if image.mode == "F" and high <= 1.0 else 1.0


def _reduced(
    decoded: _Decoded, budget: _CpuBudget, region: tuple[int, int, int, int] | None = None
) -> Image.Image:
    """The picture (or `region` of it, in displayed coordinates) as L, RGB or RGBA, as displayed, reduced
    by a whole factor towards ANALYSIS_SIZE. Converted and reduced a band of rows at a time: whatever the
    mode (a palette or 16-bit picture grows fourfold when converted), only the decoded frame itself is
    ever held at full size."""
    image = decoded.image
    box = (0, 0, *image.size) if region is None else _stored_box(region, decoded.transpose, image.size)
    width, height = box[2] - box[0], box[3] - box[1]
    # Reduced to at least twice ANALYSIS_SIZE, as Pillow's resize(reducing_gap=2.0) would: _pixels finishes.
    factor = max(1, int(max(width, height) / ANALYSIS_SIZE / 2.0))
    rows = factor * max(1, _BAND_BYTES // (width * 4 * factor))
    reduced: Image.Image | None = None
    for top in range(box[1], box[3], rows):
        budget.check()
        band = _normalised(image.crop((box[0], top, box[2], min(top + rows, box[3]))), decoded.grey_scale)
        if factor > 1:
            band = band.reduce(factor)
        if reduced is None:
            reduced = Image.new(band.mode, (-(-width // factor), -(-height // factor)))
        reduced.paste(band, (0, (top - box[1]) // factor))
    assert reduced is not None
    return reduced if decoded.transpose is None else reduced.transpose(decoded.transpose)


def _stored_box(
    box: tuple[int, int, int, int], transpose: Image.Transpose | None, size: tuple[int, int]
) -> tuple[int, int, int, int]:
    """A box (left, top, right, bottom) of the picture as displayed, in the stored picture's coordinates."""
    left, top, right, bottom = box
    w, h = size
    T = Image.Transpose
    return {
        None: (left, top, right, bottom),
        T.FLIP_LEFT_RIGHT: (w - right, top, w - left, bottom),
        T.ROTATE_180: (w - right, h - bottom, w - left, h - top),
        T.FLIP_TOP_BOTTOM: (left, h - bottom, right, h - top),
        T.TRANSPOSE: (top, left, bottom, right),
        T.ROTATE_270: (top, h - right, bottom, h - left),
        T.TRANSVERSE: (w - bottom, h - right, w - top, h - left),
        T.ROTATE_90: (w - bottom, left, w - top, right),
    }[transpose]


def _normalised(image: Image.Image, grey_scale: float = 1.0) -> Image.Image:
    """Any Pillow mode -> L, RGB or RGBA (16-bit and float scaled by `grey_scale`, palettes and
    transparency to RGBA)."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float32) * np.float32(grey_scale)
        return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), "L")
    if image.mode == "1":
        return image.convert("L")
    if image.mode in ("P", "PA", "LA", "La", "RGBa") or "transparency" in image.info:
        return image.convert("RGBA")
    if image.mode not in ("L", "RGB", "RGBA"):
        return image.convert("RGB")  # CMYK, YCbCr, LAB, HSV
    return image


def _plain_grey(decoded: _Decoded) -> np.ndarray | None:
    """An upright, opaque 8-bit grey picture's pixels as float32, else None. For a 28x28 picture this is
    exactly what _pixels(_reduced(...)) gives (no reduction, no conversion, no resize: the same values)
    without the copies they make (a third of a 28x28 PNG's preprocessing)."""
    image = decoded.image
    if image.mode != "L" or decoded.transpose is not None or "transparency" in image.info:
        return None
    return np.asarray(image, dtype=np.float32)


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


_FIELD_INDEX = np.arange(imaging.MNIST_SIZE)


def _already_mnist(ink: np.ndarray) -> np.ndarray | None:
    """An MNIST-style 28x28 (black background, the digit within 20x20) moved by whole pixels so its centre
    of mass is MNIST's, else None. MNIST's own images are already there, so they come out unchanged."""
    if float(ink.max()) < 2 * MIN_CONTRAST:
        return None
    # Ink is never negative: a row or column holds ink exactly when its sum is positive.
    row_mass, col_mass = ink.sum(axis=1), ink.sum(axis=0)
    box = imaging.bounding_box_of(row_mass > 0, col_mass > 0)
    if box is None:
        return None
    top, bottom, left, right = box
    if bottom - top > imaging.MNIST_BOX or right - left > imaging.MNIST_BOX:
        return None
    total = float(ink.sum())
    dy = round(imaging.MNIST_CENTRE - float(row_mass @ _FIELD_INDEX) / total)
    dx = round(imaging.MNIST_CENTRE - float(col_mass @ _FIELD_INDEX) / total)
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
