"""Hostile uploads (tests/hostile_uploads.py) against the preprocessing: each answered with a result or a
clear 4xx, within the CPU budget, and never decoding beyond the memory budget.

CPU time is the calling thread's (`time.thread_time`), so a busy machine does not change it much; memory is
the peak RSS of a child process that decodes every attack in turn.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from gateway import preprocess
from gateway.errors import GatewayError, InvalidInput, Overloaded, PayloadTooLarge
from gateway.preprocess import to_mnist
from gateway.settings import Settings
from tests import hostile_uploads
from tests.hostile_uploads import ATTACKS

MAX_PIXELS = Settings().max_image_pixels  # the gateway's default, not the function's
CPU_LIMIT_S = 1.0  # the promise: any upload within the upload limit costs at most this


def outcome(data: bytes, **limits) -> tuple[int, str, float]:
    """(status the gateway answers, message, thread CPU seconds)."""
    started = time.thread_time()
    try:
        out = to_mnist(data, **{"max_pixels": MAX_PIXELS, **limits})
        status, message = 200, str(int(np.argmax(out.image.sum(axis=0))))
    except GatewayError as exc:
        status, message = exc.status, exc.message
    return status, message, time.thread_time() - started


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(ATTACKS))
def test_every_attack_is_answered_with_a_result_or_a_4xx_within_the_cpu_budget(name):
    data = ATTACKS[name]()
    assert len(data) <= hostile_uploads.MAX_UPLOAD_BYTES
    status, message, cpu_s = outcome(data)
    assert status == 200 or 400 <= status < 500, message
    assert "Traceback" not in message
    assert cpu_s < CPU_LIMIT_S, f"{name}: {cpu_s:.2f} s of CPU"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("pages", [2, 20_000, 150_000])
def test_only_the_first_page_of_a_tiff_is_read(pages):
    data = hostile_uploads.tiff_pages(pages)
    status, _, cpu_s = outcome(data)
    assert status == 200
    assert cpu_s < 0.2  # as cheap as a one-page TIFF: later pages are never walked


def test_a_broken_later_page_does_not_matter():
    reference = to_mnist(hostile_uploads.tiff_pages(1))
    broken = to_mnist(hostile_uploads.tiff_pages(3, broken_second=True))
    assert np.array_equal(broken.image, reference.image)


def test_the_first_frame_of_a_long_animation_is_read_without_walking_the_rest():
    out = to_mnist(hostile_uploads.gif_many_frames(20_000))
    assert np.array_equal(out.image, to_mnist(hostile_uploads.gif_many_frames(1)).image)


def test_the_decoding_memory_limit_is_checked_from_the_header_just_under_and_over():
    data = hostile_uploads.png_zero_bomb(1000, 1000, bit_depth=8, colour_type=6)  # RGBA: 4 bytes a pixel
    with pytest.raises(PayloadTooLarge, match="MiB"):
        to_mnist(data, max_decode_bytes=4_000_000 - 1)
    with pytest.raises(InvalidInput, match="blank"):  # decoded: an all-transparent picture
        to_mnist(data, max_decode_bytes=4_000_000)


def test_sixteen_bit_pixels_count_two_bytes_and_palette_pixels_one():
    grey16 = hostile_uploads.png_zero_bomb(1000, 1000)
    palette = hostile_uploads.png_zero_bomb(1000, 1000, bit_depth=8, colour_type=3)
    for data, cost in ((grey16, 2_000_000), (palette, 1_000_000)):
        with pytest.raises(PayloadTooLarge):
            to_mnist(data, max_decode_bytes=cost - 1)
        with pytest.raises(InvalidInput, match="blank"):
            to_mnist(data, max_decode_bytes=cost)


def test_a_progressive_jpeg_counts_its_full_size_coefficients():
    data = hostile_uploads.jpeg_progressive_bomb(3000, 2000)
    status, message, _ = outcome(data, max_decode_bytes=3000 * 2000 * 2 - 1)
    assert status == 413 and "MiB" in message
    assert outcome(data, max_decode_bytes=3000 * 2000 * 2 + 2**20)[0] == 400  # flat: no digit


def test_the_tiff_strip_limit_just_under_and_over():
    limit = preprocess.MAX_TIFF_STRIPS
    status, message, _ = outcome(hostile_uploads.tiff_many_strips(height=limit))
    assert "strips" not in message and status in (200, 400)
    status, message, _ = outcome(hostile_uploads.tiff_many_strips(height=limit + 1))
    assert status == 400 and "strips" in message


def test_a_spent_cpu_budget_stops_decoding_with_a_413():
    status, message, _ = outcome(hostile_uploads.png_many_chunks(20_000), cpu_budget_s=0.0)
    assert status == 413 and "CPU" in message
    assert outcome(hostile_uploads.png_many_chunks(20_000))[0] == 200


@pytest.mark.parametrize("orientation", range(1, 9))
def test_regions_of_the_displayed_picture_map_back_to_the_stored_one(orientation):
    stored = Image.fromarray(np.arange(7 * 5, dtype=np.uint8).reshape(5, 7) * 7, "L")
    transpose = preprocess._TRANSPOSES.get(orientation)
    shown = stored if transpose is None else stored.transpose(transpose)
    region = (1, 2, 4, 5) if shown.width > 4 else (1, 2, 3, 6)
    back = stored.crop(preprocess._stored_box(region, transpose, stored.size))
    if transpose is not None:
        back = back.transpose(transpose)
    assert np.array_equal(np.asarray(back), np.asarray(shown.crop(region)))


_RSS_CHILD = r"""
import json, sys
from gateway.errors import GatewayError
from gateway.preprocess import to_mnist
from tests.hostile_uploads import _encode, digit_picture

def peak():  # VmHWM: unlike ru_maxrss, not inherited from the parent across exec
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

to_mnist(_encode(digit_picture(), "PNG"))
baseline = peak()
growth = {}
for path in sys.argv[2:]:
    data = open(path, "rb").read()
    name = path.rsplit("/", 1)[-1]
    try:
        to_mnist(data, max_pixels=int(sys.argv[1]))
    except GatewayError as exc:
        print(name, exc.status, exc.message, file=sys.stderr)
    del data
    growth[name] = peak() - baseline  # the peak so far: each value covers every attack before it too
print(json.dumps(growth))
"""


@pytest.mark.timeout(300)
def test_decoding_never_takes_more_memory_than_its_budget(tmp_path):
    """Peak RSS of a child decoding the memory-heavy attacks in turn, above its baseline after a normal
    upload (the attack's own bytes, a few MiB at most, included)."""
    names = [
        "png_rgba_at_budget",
        "png16_at_budget",
        "png_palette_at_budget",
        "png16_6300",
        "gif_lzw_bomb",
        "bmp_rle_bomb",
        "bmp_rle_at_budget",
        "webp_bomb",
        "jpeg_progressive_bomb",
    ]
    paths = []
    for name in names:  # built here: making some of them takes far more memory than reading them
        paths.append(tmp_path / name)
        paths[-1].write_bytes(ATTACKS[name]())
    out = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, str(MAX_PIXELS), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=280,
        check=True,
    )
    growth = json.loads(out.stdout.strip().splitlines()[-1])
    allowed = preprocess.DEFAULT_MAX_DECODE_BYTES * 1.15 + 16 * 2**20
    over = {name: f"{grown / 2**20:.0f} MiB" for name, grown in growth.items() if grown > allowed}
    assert not over, (over, out.stderr)
    assert growth["png_rgba_at_budget"] > preprocess.DEFAULT_MAX_DECODE_BYTES / 2, out.stderr


def test_a_process_holds_at_most_its_decoding_memory_at_once():
    memory = preprocess.DecodingMemory(100, small_bytes=10, wait_s=0.2)
    with memory.hold(60), memory.hold(40):  # just within: both at once
        with memory.hold(10):  # a small picture never waits
            pass
        with pytest.raises(Overloaded) as info, memory.hold(11):  # just over: waits, then a 503
            pass
        assert info.value.status == 503 and info.value.retry_after
    with memory.hold(100):  # everything was given back
        pass
