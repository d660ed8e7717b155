"""The Keras CNN and its training loop.

The model takes raw MNIST pixels (uint8 [N, 28, 28]); casting and scaling to [0, 1] are layers of the model,
so the exported serving signature runs exactly the preprocessing that training saw. Augmentation layers are
only active while training.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from training.contract import IMAGE_SHAPE, INPUT_KEY, NUM_CLASSES
from training.hyperparams import HyperParams


@dataclass
class TrainResult:
    history: dict[str, list[float]]  # per-epoch loss/accuracy (train and, when given, validation)
    seconds: float


@keras.saving.register_keras_serializable(package="mnist")
class ToUnitFloat(keras.layers.Layer):
    """uint8 [N, 28, 28] -> float32 [N, 28, 28, 1] in [0, 1]: the one place pixels are normalised."""

    def call(self, inputs):
        return keras.ops.expand_dims(keras.ops.cast(inputs, "float32") / 255.0, axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape, 1)


def seed_everything(seed: int) -> None:
    """Python, NumPy and TF seeds plus deterministic TF kernels, so a --seed reproduces a run."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def build_model(hp: HyperParams) -> keras.Model:
    inputs = keras.Input(shape=IMAGE_SHAPE, dtype="uint8", name=INPUT_KEY)
    x = ToUnitFloat(name="to_unit_float")(inputs)
    if hp.augment:
        x = keras.layers.RandomRotation(0.03, fill_mode="constant", seed=hp.seed, name="aug_rotate")(x)
        x = keras.layers.RandomTranslation(
            0.1, 0.1, fill_mode="constant", seed=hp.seed + 1, name="aug_shift"
        )(x)
        x = keras.layers.RandomZoom(0.1, fill_mode="constant", seed=hp.seed + 2, name="aug_zoom")(x)
    for i, filters in enumerate(hp.filters):
        x = keras.layers.Conv2D(filters, 5, use_bias=False, name=f"conv{i + 1}")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i + 1}")(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D(name=f"pool{i + 1}")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(hp.dense_units, use_bias=False, name="dense")(x)
    x = keras.layers.BatchNormalization(momentum=0.9, name="bn_dense")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Dropout(hp.dropout, seed=hp.seed + 3)(x)
    outputs = keras.layers.Dense(NUM_CLASSES, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="mnist_cnn")


def compile_model(model: keras.Model, hp: HyperParams, steps_per_epoch: int) -> None:
    # Cosine decay with a short warm-up: fast early progress, a small final step size for the last few tenths.
    total = max(1, hp.epochs * steps_per_epoch)
    warmup = min(steps_per_epoch // 2, total // 10)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=hp.learning_rate / 10,
        decay_steps=total - warmup,
        alpha=0.01,
        warmup_target=hp.learning_rate,
        warmup_steps=warmup,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=schedule),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


def train(
    hp: HyperParams,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    *,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    extra: tuple[np.ndarray, np.ndarray, float] | None = None,
    verbose: int | str = "auto",
) -> tuple[keras.Model, TrainResult]:
    """Seed, build, compile and fit; returns the trained model and its per-epoch history and duration.

    `extra` (images, labels, weight) is appended to the (possibly cut) training set, each of its images
    weighing `weight` in the loss against 1 for the others: the train side of a feedback snapshot."""
    if hp.max_train_samples:
        train_images = train_images[: hp.max_train_samples]
        train_labels = train_labels[: hp.max_train_samples]
    sample_weight = None
    if extra is not None and len(extra[0]):
        images, labels, weight = extra
        sample_weight = np.concatenate(
            [np.ones(len(train_images), np.float32), np.full(len(images), weight, np.float32)]
        )
        train_images = np.concatenate([train_images, images])
        train_labels = np.concatenate([train_labels, labels])
    seed_everything(hp.seed)
    model = build_model(hp)
    steps = int(np.ceil(len(train_images) / hp.batch_size))
    compile_model(model, hp, steps)
    started = time.perf_counter()
    history = model.fit(
        train_images,
        train_labels,
        sample_weight=sample_weight,
        batch_size=hp.batch_size,
        epochs=hp.epochs,
        validation_data=validation,
        shuffle=True,
        verbose=verbose,
    )
    seconds = time.perf_counter() - started
    return model, TrainResult({k: [float(v) for v in vs] for k, vs in history.history.items()}, seconds)


def predict_probabilities(model: keras.Model, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    return np.asarray(model.predict(images, batch_size=batch_size, verbose=0), dtype=np.float32)
