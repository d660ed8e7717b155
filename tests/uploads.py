"""Realistic uploads made from MNIST test images, and the awkward files real users send.

    make_upload(kind, digit28, rng) -> bytes       # one of KINDS, from a uint8 [28, 28] MNIST image
    EDGE_CASES[name](digit28) -> bytes             # animated GIF, 16-bit PNG, CMYK JPEG, ...
    BAD_UPLOADS[name]() -> (bytes, expected error class)

Used by the preprocessing tests and benchmark, and by the gateway's end-to-end and browser tests.
Every generator is deterministic for a given numpy Generator.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

from gateway.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType

INK_COLOURS = [(25, 45, 190), (190, 25, 25), (20, 130, 45), (110, 30, 150), (40, 40, 40), (200, 100, 0)]
PAPER_COLOURS = [(255, 255, 255), (250, 246, 230), (235, 242, 250), (245, 245, 245), (255, 250, 205)]


def encode(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def _digit_alpha(digit: np.ndarray, size: int) -> np.ndarray:
    """The MNIST digit drawn `size` pixels a side, smoothly: ink coverage in 0..1."""
    big = Image.fromarray(digit, "L").resize((size, size), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(big, dtype=np.float32) / 255.0, 0, 1)


def _place(canvas_hw: tuple[int, int], alpha: np.ndarray, rng: np.random.Generator, *, corner=False):
    """A full-canvas coverage map with `alpha` at a random (or corner-biased) position."""
    h, w = canvas_hw
    s = alpha.shape[0]
    if corner:
        top = (
            int(rng.integers(0, max(1, (h - s) // 4) + 1))
            if rng.random() < 0.5
            else h - s - int(rng.integers(0, max(1, (h - s) // 4) + 1))
        )
        left = (
            int(rng.integers(0, max(1, (w - s) // 4) + 1))
            if rng.random() < 0.5
            else w - s - int(rng.integers(0, max(1, (w - s) // 4) + 1))
        )
    else:
        top, left = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
    coverage = np.zeros((h, w), dtype=np.float32)
    coverage[top : top + s, left : left + s] = alpha
    return coverage


def _paint(coverage: np.ndarray, paper, ink) -> np.ndarray:
    paper = np.asarray(paper, dtype=np.float32)
    ink = np.asarray(ink, dtype=np.float32)
    c = coverage[..., None]
    return paper * (1 - c) + ink * c


def _rgb(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "RGB")


def mnist_png(digit, rng) -> bytes:
    return encode(Image.fromarray(digit, "L"))


def canvas(digit, rng) -> bytes:
    """Dark ink, drawn large, somewhere on a light canvas (a drawing app or a scan)."""
    h, w = int(rng.integers(280, 600)), int(rng.integers(280, 600))
    size = int(min(h, w) * rng.uniform(0.5, 0.95))
    coverage = _place((h, w), _digit_alpha(digit, size), rng)
    grey = float(rng.uniform(225, 255))
    return encode(_rgb(_paint(coverage, (grey, grey, grey), (0, 0, 0))))


def off_centre(digit, rng) -> bytes:
    """A small digit near a corner of a big canvas."""
    h, w = int(rng.integers(400, 700)), int(rng.integers(500, 900))
    size = int(min(h, w) * rng.uniform(0.18, 0.35))
    coverage = _place((h, w), _digit_alpha(digit, size), rng, corner=True)
    return encode(_rgb(_paint(coverage, (255, 255, 255), (10, 10, 10))))


def coloured_ink(digit, rng) -> bytes:
    """Blue, red, green, purple, grey or orange ink on white or tinted paper."""
    h = w = int(rng.integers(200, 500))
    size = int(h * rng.uniform(0.5, 0.9))
    coverage = _place((h, w), _digit_alpha(digit, size), rng)
    ink = INK_COLOURS[int(rng.integers(len(INK_COLOURS)))]
    paper = PAPER_COLOURS[int(rng.integers(len(PAPER_COLOURS)))]
    return encode(_rgb(_paint(coverage, paper, ink)))


def jpeg(digit, rng) -> bytes:
    """A light-canvas drawing saved as a lossy JPEG (colour or grey, quality 40-85)."""
    h, w = int(rng.integers(240, 520)), int(rng.integers(240, 520))
    size = int(min(h, w) * rng.uniform(0.5, 0.95))
    coverage = _place((h, w), _digit_alpha(digit, size), rng)
    image = _rgb(_paint(coverage, (250, 250, 250), INK_COLOURS[int(rng.integers(len(INK_COLOURS)))]))
    if rng.random() < 0.3:
        image = image.convert("L")
    return encode(image, "JPEG", quality=int(rng.integers(40, 86)))


def transparent_canvas(digit, rng) -> bytes:
    """What an HTML canvas exports: RGBA PNG, transparent (0, 0, 0, 0) background, opaque ink strokes
    with anti-aliased edges."""
    side = int(rng.choice([200, 280, 400]))
    size = int(side * rng.uniform(0.55, 0.9))
    coverage = _place((side, side), _digit_alpha(digit, size), rng)
    ink = (0, 0, 0) if rng.random() < 0.6 else INK_COLOURS[int(rng.integers(len(INK_COLOURS)))]
    rgba = np.zeros((side, side, 4), dtype=np.uint8)
    stroke = coverage > 0
    rgba[stroke, :3] = ink
    rgba[..., 3] = np.rint(coverage * 255).astype(np.uint8)
    return encode(Image.fromarray(rgba, "RGBA"))


def photo(digit, rng) -> bytes:
    """A phone photo of the digit written on paper: tinted paper, light falling off across the sheet and
    into the corners, a slightly soft pen, sensor noise, JPEG."""
    h, w = [(480, 640), (600, 800), (1200, 1600)][int(rng.integers(3))]
    size = int(min(h, w) * rng.uniform(0.4, 0.75))
    coverage = _place((h, w), _digit_alpha(digit, size), rng)
    pen = Image.fromarray(np.rint(coverage * 255).astype(np.uint8), "L")
    coverage = np.asarray(pen.filter(ImageFilter.GaussianBlur(min(h, w) / 600)), dtype=np.float32) / 255.0
    paper = np.array([235, 228, 210], dtype=np.float32) + rng.uniform(-15, 15, 3)
    ink = np.array([35, 35, 55], dtype=np.float32) + rng.uniform(-20, 20, 3)
    sheet = _paint(coverage * rng.uniform(0.75, 1.0), paper, ink)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xs / w + np.sin(angle) * ys / h + 1) / 2  # 0..1 across the sheet
    light = 1.0 - rng.uniform(0.25, 0.5) * ramp
    vignette = 1.0 - 0.25 * (((xs - w / 2) / w) ** 2 + ((ys - h / 2) / h) ** 2) * 4
    sheet = sheet * (light * vignette)[..., None]
    sheet += rng.normal(0, rng.uniform(3, 9), sheet.shape)
    return encode(_rgb(sheet), "JPEG", quality=int(rng.integers(70, 92)))


KINDS: dict[str, Callable[[np.ndarray, np.random.Generator], bytes]] = {
    "mnist_png": mnist_png,
    "canvas": canvas,
    "off_centre": off_centre,
    "coloured_ink": coloured_ink,
    "jpeg": jpeg,
    "transparent_canvas": transparent_canvas,
    "photo": photo,
}


def make_upload(kind: str, digit: np.ndarray, rng: np.random.Generator) -> bytes:
    return KINDS[kind](digit, rng)


# --- edge cases: real images in awkward encodings (all should predict like the digit) ---


def _dark_on_light(digit: np.ndarray, side: int = 200) -> np.ndarray:
    """uint8 grey [side, side]: black digit centred on white."""
    alpha = _digit_alpha(digit, side)
    return np.rint(255 * (1 - alpha)).astype(np.uint8)


def animated_gif(digit) -> bytes:
    """Three frames: the digit first, then two unrelated frames the gateway must ignore."""
    frames = [Image.fromarray(_dark_on_light(digit), "L").convert("P")]
    frames += [Image.new("P", frames[0].size, color) for color in (0, 128)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def png16(digit) -> bytes:
    """16-bit greyscale PNG (Pillow mode I;16)."""
    values = _dark_on_light(digit).astype(np.uint16) * 257
    return encode(Image.fromarray(values, "I;16"))


def cmyk_jpeg(digit) -> bytes:
    return encode(Image.fromarray(_dark_on_light(digit), "L").convert("CMYK"), "JPEG", quality=90)


def palette_transparent_png(digit) -> bytes:
    """Palette PNG whose background index is transparent (and black, so ignoring alpha would fail)."""
    ink = _digit_alpha(digit, 200) > 0.5
    indices = np.where(ink, 1, 0).astype(np.uint8)
    image = Image.fromarray(indices, "P")
    image.putpalette([0, 0, 0, 20, 20, 120] + [0, 0, 0] * 254)
    return encode(image, transparency=0)


def exif_rotated_jpeg(digit) -> bytes:
    """Stored lying on its side with EXIF Orientation=6 ("rotate 90 degrees clockwise to display")."""
    upright = Image.fromarray(_dark_on_light(digit), "L")
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, "JPEG", quality=92, exif=exif.tobytes())


def bmp(digit) -> bytes:
    return encode(Image.fromarray(_dark_on_light(digit), "L").convert("RGB"), "BMP")


def webp(digit) -> bytes:
    return encode(Image.fromarray(_dark_on_light(digit), "L").convert("RGB"), "WEBP", quality=80)


def tiff(digit) -> bytes:
    return encode(Image.fromarray(_dark_on_light(digit), "L"), "TIFF")


def white_on_transparent_canvas(digit) -> bytes:
    """White strokes on a transparent canvas: composited on white they would vanish."""
    alpha = _digit_alpha(digit, 280)
    rgba = np.zeros((280, 280, 4), dtype=np.uint8)
    rgba[..., :3] = 255
    rgba[..., 3] = np.rint(alpha * 255).astype(np.uint8)
    return encode(Image.fromarray(rgba, "RGBA"))


def light_on_dark_photo(digit) -> bytes:
    """Chalk on a blackboard: light ink on a dark, unevenly lit background."""
    alpha = _digit_alpha(digit, 300)
    h, w = 360, 480
    coverage = np.zeros((h, w), dtype=np.float32)
    coverage[30:330, 90:390] = alpha
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    board = 40 + 30 * xs / w
    grey = board * (1 - coverage) + 230 * coverage + np.random.default_rng(0).normal(0, 4, (h, w))
    return encode(Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8), "L"), "JPEG", quality=85)


EDGE_CASES: dict[str, Callable[[np.ndarray], bytes]] = {
    "animated_gif": animated_gif,
    "png16": png16,
    "cmyk_jpeg": cmyk_jpeg,
    "palette_transparent_png": palette_transparent_png,
    "exif_rotated_jpeg": exif_rotated_jpeg,
    "bmp": bmp,
    "webp": webp,
    "tiff": tiff,
    "white_on_transparent_canvas": white_on_transparent_canvas,
    "light_on_dark_photo": light_on_dark_photo,
}


# --- bad uploads: each must fail with a clear client error ---


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that claims width x height pixels (8-bit grey): a decompression bomb's header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _sample_png() -> bytes:
    rng = np.random.default_rng(0)
    return encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB"))


def _sample_jpeg() -> bytes:
    rng = np.random.default_rng(0)
    return encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB"), "JPEG")


BAD_UPLOADS: dict[str, Callable[[], tuple[bytes, type[Exception]]]] = {
    "empty": lambda: (b"", InvalidInput),
    "truncated_png": lambda: (_sample_png()[:400], InvalidInput),
    "truncated_jpeg": lambda: (_sample_jpeg()[: len(_sample_jpeg()) // 2], InvalidInput),
    "corrupt_png": lambda: (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, InvalidInput),
    "corrupt_jpeg": lambda: (b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF" + b"\x13" * 500, InvalidInput),
    "gif_header_only": lambda: (b"GIF89a", InvalidInput),
    "blank_white": lambda: (encode(Image.new("RGB", (300, 300), (255, 255, 255))), InvalidInput),
    "blank_black_28": lambda: (encode(Image.new("L", (28, 28), 0)), InvalidInput),
    "decompression_bomb": lambda: (png_header_only(30_000, 30_000), PayloadTooLarge),
    "over_pixel_limit": lambda: (png_header_only(6_000, 5_000), PayloadTooLarge),
    "svg": lambda: (
        b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="28" height="28">'
        b'<text x="4" y="24">7</text></svg>',
        UnsupportedMediaType,
    ),
    "text": lambda: (b"seven\n", UnsupportedMediaType),
    "pdf": lambda: (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", UnsupportedMediaType),
    "html": lambda: (b"<!doctype html><img src=x onerror=alert(1)>", UnsupportedMediaType),
    "zip": lambda: (b"PK\x03\x04" + b"\x00" * 100, UnsupportedMediaType),
    "random_bytes": lambda: (np.random.default_rng(1).bytes(2048), UnsupportedMediaType),
}


def preprocessed_batch(kind: str, digits: np.ndarray, seed: int = 0) -> tuple[np.ndarray, list[float]]:
    """Make one upload of `kind` per MNIST digit, run each through the gateway's preprocessing; returns
    the model inputs uint8 [N, 28, 28] and the per-image preprocessing times in seconds."""
    import time

    from gateway.preprocess import to_mnist

    rng = np.random.default_rng(seed)
    images = np.empty((len(digits), 28, 28), dtype=np.uint8)
    seconds = []
    for i, digit in enumerate(digits):
        data = make_upload(kind, digit, rng)
        started = time.perf_counter()
        images[i] = to_mnist(data).image
        seconds.append(time.perf_counter() - started)
    return images, seconds


# --- real-size uploads: what phones and scanners send (made at test time, never committed) ---

PHONE_SIZE = (4000, 3000)  # 12 MP, as the sensor stores it
EXIF_ORIENTATION = 0x0112
# EXIF orientation -> how the upright picture is stored (6: "rotate 90 degrees clockwise to display").
_STORED_AS = {1: None, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def _upscaled_noisy(sheet: np.ndarray, size: tuple[int, int], noise: float, rng) -> Image.Image:
    """A small float RGB sheet scaled up to `size` (w, h) as the lens would blur it, plus sensor noise at
    full resolution (what makes real photos weigh megabytes)."""
    small = _rgb(sheet)
    big = np.asarray(small.resize(size, Image.Resampling.BICUBIC), dtype=np.int16)
    grain = rng.standard_normal((size[1], size[0], 1), dtype=np.float32) * noise
    grain = np.rint(grain).astype(np.int16)  # luminance grain, the same on the three channels
    return Image.fromarray(np.clip(big + grain, 0, 255).astype(np.uint8), "RGB")


def phone_photo(digit: np.ndarray, rng: np.random.Generator, *, orientation: int = 1) -> bytes:
    """A 12 MP JPEG of the digit written on paper, as a phone sends it: tinted paper, light falling off
    across the sheet, a soft pen, grain, quality 80-92, 1-2 MB. Orientation 6 or 8: a portrait picture
    stored sideways (4000x3000) with the EXIF tag that turns it upright, as phones held upright do."""
    w, h = PHONE_SIZE if orientation == 1 else PHONE_SIZE[::-1]  # held upright: a portrait picture
    # The scene at 1/4 scale: an upscale by 4 softens it like a phone lens and costs little here.
    sw, sh = w // 4, h // 4
    size = int(sh * rng.uniform(0.45, 0.75))
    coverage = _place((sh, sw), _digit_alpha(digit, size), rng)
    pen = Image.fromarray(np.rint(coverage * 255).astype(np.uint8), "L")
    coverage = np.asarray(pen.filter(ImageFilter.GaussianBlur(1.2)), dtype=np.float32) / 255.0
    paper = np.array([232, 226, 212], dtype=np.float32) + rng.uniform(-15, 15, 3)
    ink = np.array([30, 35, 70], dtype=np.float32) + rng.uniform(-20, 20, 3)
    sheet = _paint(coverage * rng.uniform(0.8, 1.0), paper, ink)
    ys, xs = np.mgrid[0:sh, 0:sw].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xs / sw + np.sin(angle) * ys / sh + 1) / 2
    light = 1.0 - rng.uniform(0.2, 0.4) * ramp
    vignette = 1.0 - 0.2 * (((xs - sw / 2) / sw) ** 2 + ((ys - sh / 2) / sh) ** 2) * 4
    image = _upscaled_noisy(sheet * (light * vignette)[..., None], (w, h), rng.uniform(3.0, 4.5), rng)
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Example", "Phone 12"  # Make, Model
    if _STORED_AS[orientation] is not None:
        image = image.transpose(_STORED_AS[orientation])
        exif[EXIF_ORIENTATION] = orientation
    return encode(image, "JPEG", quality=int(rng.integers(80, 93)), exif=exif.tobytes())


def png_scan(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A greyscale flatbed scan of the sheet (about 2500x3500, A4 at 300 dpi): a PNG of about 4 MB."""
    w, h = 2480, 3508
    sw, sh = w // 4, h // 4
    coverage = _place((sh, sw), _digit_alpha(digit, int(sw * rng.uniform(0.4, 0.7))), rng)
    sheet = _paint(coverage, (245, 245, 245), (20, 20, 20))
    grey = _upscaled_noisy(sheet, (w, h), 1.6, rng).convert("L")
    return encode(grey, "PNG")


def padded_jpeg(data: bytes, total_bytes: int) -> bytes:
    """The JPEG grown to exactly `total_bytes` with APP15 segments after its header, the way phones embed
    previews and depth maps: still the same picture to any decoder."""
    if not data.startswith(b"\xff\xd8") or total_bytes < len(data):
        raise ValueError("need a JPEG no larger than total_bytes")
    missing = total_bytes - len(data)
    segments = []
    while missing > 0:
        body = min(missing - 4, 65533)
        if body < 0 or 0 < missing - (body + 4) < 4:  # leave no remainder too small for a segment
            body = max(0, missing // 2 - 4)
        segments.append(b"\xff\xef" + struct.pack(">H", body + 2) + b"\x00" * body)
        missing -= body + 4
    return data[:2] + b"".join(segments) + data[2:]


MULTIPART_BOUNDARY = "photo-upload-boundary-7d1f"


def multipart_body(field: str, filename: str, data: bytes, content_type: str = "image/jpeg") -> bytes:
    """One file part, as a browser or curl sends it, with a fixed boundary so its overhead is exact."""
    head = (
        f"--{MULTIPART_BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{MULTIPART_BOUNDARY}--\r\n".encode()


MULTIPART_CONTENT_TYPE = f"multipart/form-data; boundary={MULTIPART_BOUNDARY}"
