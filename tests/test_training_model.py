"""The Keras model: raw uint8 input scaled in the graph, augmentation only in training, seeds reproduce."""

from __future__ import annotations

import numpy as np
import pytest

from training.data import load_mnist
from training.hyperparams import HyperParams
from training.model import build_model, train


@pytest.fixture(scope="module")
def small_mnist(mnist_dir):
    mnist = load_mnist(mnist_dir)
    return mnist.train_images[:512], mnist.train_labels[:512]


def test_input_is_raw_uint8_and_scaled_inside_the_model():
    model = build_model(HyperParams(augment=False))
    assert model.input.dtype == "uint8" and tuple(model.input.shape) == (None, 28, 28)
    to_unit = model.get_layer("to_unit_float")
    scaled = np.asarray(to_unit(np.array([[[0, 51, 255] + [0] * 25] * 28], dtype=np.uint8)))
    assert scaled.shape == (1, 28, 28, 1) and scaled.dtype == np.float32
    np.testing.assert_allclose(scaled[0, 0, :3, 0], [0.0, 0.2, 1.0])


def test_augmentation_is_inactive_at_inference(small_mnist):
    model = build_model(HyperParams(augment=True))
    images = small_mnist[0][:8]
    first = np.asarray(model(images, training=False))
    np.testing.assert_array_equal(first, np.asarray(model(images, training=False)))
    assert not np.allclose(first, np.asarray(model(images, training=True)))


def _weights_after_training(images, labels, seed):
    hp = HyperParams(epochs=1, batch_size=64, seed=seed, augment=True)
    model, result = train(hp, images, labels, verbose=0)
    assert len(result.history["loss"]) == 1 and result.seconds > 0
    return model.get_weights()


def test_same_seed_reproduces_training(small_mnist):
    first = _weights_after_training(*small_mnist, seed=7)
    second = _weights_after_training(*small_mnist, seed=7)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    other = _weights_after_training(*small_mnist, seed=8)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))
