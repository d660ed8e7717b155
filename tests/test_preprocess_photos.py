"""Phone photos and scans in the preprocessing: read upright at their displayed size, decoded at reduced
scale (a 12 MP JPEG is never decoded whole), and as accurate as the raw MNIST images they were made from."""

from __future__ import annotations

import numpy as np
import pytest

from gateway import preprocess
from tests import uploads

PHOTOS_FOR_ACCURACY = 24


@pytest.mark.parametrize(
    ("name", "displayed"),
    [("phone_upright", (4000, 3000)), ("phone_exif_6", (3000, 4000)), ("phone_exif_8", (3000, 4000))],
)
def test_a_12_mp_photo_is_decoded_at_reduced_scale_and_turned_upright(
    phone_photos, monkeypatch, name, displayed
):
    decoded_sizes = []
    real_cost = preprocess.decode_bytes

    def spy(image, *args):  # asked the cost of decoding the image as it will be decoded
        decoded_sizes.append(image.size)
        return real_cost(image, *args)

    monkeypatch.setattr(preprocess, "decode_bytes", spy)
    result = preprocess.to_mnist(phone_photos[name].data, max_pixels=40_000_000)
    assert (result.width, result.height) == displayed
    [(width, height)] = decoded_sizes
    assert max(width, height) <= 2 * preprocess.DECODE_SIZE  # 1/8 of 4000 here: 64x fewer pixels
    assert width > height  # stored landscape, whatever it displays


@pytest.mark.slow
def test_phone_photos_are_read_as_well_as_the_raw_images(quick_keras_model, mnist_dir):
    from training.data import load_mnist

    data = load_mnist(mnist_dir)
    digits = data.test_images[:PHOTOS_FOR_ACCURACY]
    labels = data.test_labels[:PHOTOS_FOR_ACCURACY]
    rng = np.random.default_rng(11)
    inputs = np.stack(
        [
            preprocess.to_mnist(uploads.phone_photo(d, rng, orientation=(1, 6, 8)[i % 3])).image
            for i, d in enumerate(digits)
        ]
    )
    raw = (quick_keras_model.predict(digits, verbose=0).argmax(axis=1) == labels).sum()
    photos = (quick_keras_model.predict(inputs, verbose=0).argmax(axis=1) == labels).sum()
    assert photos >= raw - 1, f"{photos}/{len(labels)} photos right, {raw} raw images"
