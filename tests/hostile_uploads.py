"""Hostile uploads, built at test time: small files that are costly to open, decode or walk.

    ATTACKS[name]() -> bytes     # every one within the default upload limit (10 MiB)

Used by the preprocessing tests (status, and memory in a child process) and by `bench/hostile.py` (CPU time
and peak memory per attack). Files are made by hand from their format's structure where Pillow would need
the full decoded picture to write them.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

from PIL import Image

MAX_UPLOAD_BYTES = 10 * 1024 * 1024


def digit_picture(size: int = 60) -> Image.Image:
    """A dark bar on white paper: a '1' the preprocessing finds."""
    image = Image.new("L", (size, size), 255)
    image.paste(0, (size * 2 // 5, size // 6, size * 3 // 5, size * 5 // 6))
    return image


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


# ----------------------------------------------------------------------------------------------- TIFF


def _ifd(entries: list[tuple[int, int, int, int]], next_offset: int) -> bytes:
    """A little-endian TIFF directory: (tag, type, count, value) entries, values that fit inline."""
    out = struct.pack("<H", len(entries))
    for tag, kind, count, value in sorted(entries):
        packed = struct.pack("<H", value) + b"\0\0" if kind == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, count) + packed
    return out + struct.pack("<I", next_offset)


def _page(width: int | None, height: int, strip_offset: int, strip_bytes: int, *, grey: bool) -> list:
    entries = [
        (257, 4, 1, height),  # ImageLength
        (262, 3, 1, 1),  # BlackIsZero
        (273, 4, 1, strip_offset),  # StripOffsets
        (279, 4, 1, strip_bytes),  # StripByteCounts
    ]
    if grey:
        entries.append((258, 3, 1, 8))  # BitsPerSample (default: 1, bilevel)
    if width is not None:
        entries.append((256, 4, 1, width))  # ImageWidth
    return entries


def tiff_pages(pages: int, *, broken_second: bool = False) -> bytes:
    """A TIFF whose first page is a grey digit and whose other pages are 1x1 bilevel (all sharing one
    byte), or whose second page has no width at all."""
    first = digit_picture()
    pixels = first.tobytes()
    pixel_at = 8
    first_pixels_at = pixel_at + 1
    directories = [_page(first.width, first.height, first_pixels_at, len(pixels), grey=True)]
    for page in range(1, pages):
        width = None if page == 1 and broken_second else 1
        directories.append(_page(width, 1, pixel_at, 1, grey=False))
    ifd_at = first_pixels_at + len(pixels)
    ifd_at += ifd_at % 2
    body = bytearray(b"II*\0" + struct.pack("<I", ifd_at) + b"\0" + pixels)
    body += b"\0" * (ifd_at - len(body))
    for page, entries in enumerate(directories):
        size = 2 + 12 * len(entries) + 4
        next_at = 0 if page == len(directories) - 1 else len(body) + size
        body += _ifd(entries, next_at)
    return bytes(body)


def tiff_many_strips(width: int = 1, height: int = 2_000_000) -> bytes:
    """A 1-pixel-wide, very tall first page cut into one-row strips: a long strip table to walk."""
    offsets_at = 16
    counts_at = offsets_at + 4 * height
    ifd_at = counts_at + 4 * height
    entries = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, height, offsets_at),
        (278, 4, 1, 1),
        (279, 4, height, counts_at),
    ]
    body = b"II*\0" + struct.pack("<I", ifd_at) + b"\x80" * 8
    body += struct.pack(f"<{height}I", *([8] * height)) + struct.pack(f"<{height}I", *([width] * height))
    return body + _ifd(entries, 0)


# ----------------------------------------------------------------------------------------------- PNG


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_zero_bomb(width: int, height: int, *, bit_depth: int = 16, colour_type: int = 0) -> bytes:
    """A PNG of all-zero pixels: tiny compressed, width x height when decoded (16-bit grey by default)."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour_type]
    row = b"\0" * (1 + width * channels * bit_depth // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    palette = _chunk(b"PLTE", b"\xff\xff\xff\0\0\0") if colour_type == 3 else b""
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + palette
        + _chunk(b"IDAT", idat)
        + _chunk(b"IEND", b"")
    )


def png_many_chunks(count: int = 700_000) -> bytes:
    """A valid small digit PNG with `count` empty private chunks before its pixels."""
    png = _encode(digit_picture(), "PNG")
    ihdr_end = 8 + 25
    return png[:ihdr_end] + _chunk(b"prVt", b"") * count + png[ihdr_end:]


def png_header_only(width: int, height: int) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IEND", b"")


# ----------------------------------------------------------------------------------------------- GIF


def gif_header(width: int, height: int) -> bytes:
    """A GIF whose screen and first image claim width x height, with almost no data."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    image = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x4c\x01\x00"
    return screen + image + b";"


def gif_many_frames(frames: int = 20_000) -> bytes:
    """An animated GIF: the digit first, then many tiny frames."""
    first = _encode(digit_picture().convert("P"), "GIF")
    tiny = (
        b"!\xf9\x04\x00\x00\x00\x00\x00"
        + b","
        + struct.pack("<HHHHB", 0, 0, 1, 1, 0)
        + b"\x02\x02\x44\x01\x00"
    )
    return first[:-1] + tiny * frames + b";"


def gif_many_blocks(blocks: int = 3_000_000) -> bytes:
    """A GIF whose first image is preceded by a comment of millions of one-byte sub-blocks."""
    first = _encode(digit_picture().convert("P"), "GIF")
    at = first.index(b",")
    comment = b"!\xfe" + b"\x01x" * blocks + b"\0"
    return first[:at] + comment + first[at:]


def gif_lzw_bomb(width: int, height: int) -> bytes:
    return _encode(Image.new("P", (width, height), 0), "GIF")


# ----------------------------------------------------------------------------------------------- others


def bmp_header(width: int, height: int, bits: int = 32) -> bytes:
    """A BMP that claims width x height and carries one row."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, 0, 0, 2835, 2835, 0, 0)
    data = b"\0" * (width * bits // 8)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + len(data), 0, 0, 54) + info + data


def bmp_rle_bomb(width: int, height: int) -> bytes:
    """An 8-bit RLE BMP: each row a few run codes, decoded to width x height bytes."""
    palette = b"".join(struct.pack("<BBBB", v, v, v, 0) for v in (255, 0))
    row = b""
    left = width
    while left:
        run = min(255, left)
        row += bytes([run, 0])
        left -= run
    data = (row + b"\0\0") * height + b"\0\1"
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(data), 2835, 2835, 2, 0)
    offset = 14 + 40 + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + info + palette + data


def webp_header(width: int, height: int) -> bytes:
    """A lossless WebP (VP8L) whose header claims width x height, with no image data after it."""
    bits = (width - 1) | ((height - 1) << 14)
    payload = b"\x2f" + struct.pack("<I", bits) + b"\0" * 8
    chunk = b"VP8L" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def webp_bomb(width: int, height: int) -> bytes:
    return _encode(Image.new("L", (width, height), 255), "WEBP", lossless=True, quality=0, method=0)


def jpeg_many_markers(count: int = 2_000_000) -> bytes:
    """A small JPEG with millions of empty COM markers before its frame."""
    jpeg = _encode(digit_picture(), "JPEG")
    return jpeg[:2] + b"\xff\xfe\x00\x02" * count + jpeg[2:]


def jpeg_progressive_bomb(width: int, height: int) -> bytes:
    """A flat progressive JPEG: a few KiB, but its decoder keeps every coefficient at full size."""
    return _encode(Image.new("L", (width, height), 255), "JPEG", progressive=True, quality=10)


ATTACKS: dict[str, Callable[[], bytes]] = {
    "tiff_20k_pages": lambda: tiff_pages(20_000),
    "tiff_150k_pages": lambda: tiff_pages(150_000),
    "tiff_broken_second_page": lambda: tiff_pages(3, broken_second=True),
    "tiff_1m_strips": lambda: tiff_many_strips(height=1_000_000),
    "png16_6300": lambda: png_zero_bomb(6300, 6300),
    "png16_at_budget": lambda: png_zero_bomb(5792, 5792),
    "png_rgba_at_budget": lambda: png_zero_bomb(4096, 4096, bit_depth=8, colour_type=6),
    "png_palette_at_budget": lambda: png_zero_bomb(6300, 6300, bit_depth=8, colour_type=3),
    "png_rgba_bomb": lambda: png_zero_bomb(6000, 6000, bit_depth=8, colour_type=6),
    "png_700k_chunks": png_many_chunks,
    "png_huge_header": lambda: png_header_only(65_535, 65_535),
    "gif_huge_header": lambda: gif_header(65_535, 65_535),
    "gif_20k_frames": gif_many_frames,
    "gif_3m_subblocks": gif_many_blocks,
    "gif_lzw_bomb": lambda: gif_lzw_bomb(6000, 6000),
    "bmp_huge_header": lambda: bmp_header(50_000, 50_000),
    "bmp_rle_bomb": lambda: bmp_rle_bomb(6000, 6000),
    "bmp_rle_at_budget": lambda: bmp_rle_bomb(4700, 4700),
    "webp_huge_header": lambda: webp_header(16_383, 16_383),
    "webp_bomb": lambda: webp_bomb(6000, 6000),
    "jpeg_2m_markers": jpeg_many_markers,
    "jpeg_progressive_bomb": lambda: jpeg_progressive_bomb(7000, 5500),
}
