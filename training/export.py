"""Atomic, versioned SavedModel export: `<base>/<model_name>/<version>/`.

A version appears complete or not at all: the SavedModel, warm-up records and report are written into a hidden
`.tmp-<uuid>` sibling (TF Serving ignores names that are not integers), fsynced, then renamed to the next
integer version under an exclusive lock, so concurrent exports get distinct versions. A failed export removes
its temporary directory; a killed one leaves only a hidden `.tmp-*` that no server will load.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from training.contract import (
    ASSETS_EXTRA,
    DIGIT_KEY,
    IMAGE_SHAPE,
    INPUT_KEY,
    METRICS_FILE,
    MODEL_NAME,
    PROBABILITIES_KEY,
    SIGNATURE_NAME,
    WARMUP_FILE,
    version_dirs,
)
from training.errors import ExportError

TMP_PREFIX = ".tmp-"
LOCK_FILE = ".export.lock"
WARMUP_BATCH_SIZES = (1, 2, 4, 8, 16, 32)


def export_version(
    model: keras.Model,
    base_path: str | os.PathLike[str],
    model_name: str = MODEL_NAME,
    *,
    metrics: Mapping,
    warmup_images: np.ndarray,
    extra_files: Mapping[str, bytes | str | os.PathLike[str]] | None = None,
) -> Path:
    """Export `model` as the next version of `model_name` under `base_path`; returns the version directory.

    `metrics` goes to assets.extra/metrics.json; `warmup_images` (uint8 [N, 28, 28]) become TF Serving warm-up
    requests; `extra_files` maps file names to bytes or a source path, copied into assets.extra/ (the PNGs).
    """
    warmup_images = np.asarray(warmup_images)
    if warmup_images.dtype != np.uint8 or warmup_images.ndim != 3 or warmup_images.shape[1:] != IMAGE_SHAPE:
        raise ExportError(
            f"warmup_images must be uint8 [N, 28, 28], got {warmup_images.dtype} {warmup_images.shape}"
        )
    if len(warmup_images) == 0:
        raise ExportError("warmup_images is empty")
    if Path(model_name).name != model_name or model_name.startswith("."):
        raise ExportError(f"model name must be a plain directory name: {model_name!r}")
    for name in extra_files or {}:
        if Path(name).name != name or name.startswith(".") or name in (WARMUP_FILE, METRICS_FILE):
            raise ExportError(f"extra file name must be a plain file name, not reserved: {name!r}")
    model_dir = Path(base_path) / model_name
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"{model_dir}: cannot create the model directory ({exc.strerror})") from None
    tmp = model_dir / f"{TMP_PREFIX}{uuid.uuid4().hex}"
    try:
        _write_saved_model(model, tmp)
        assets = tmp / ASSETS_EXTRA
        assets.mkdir()
        write_warmup_requests(assets / WARMUP_FILE, warmup_images, model_name)
        (assets / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        for name, content in (extra_files or {}).items():
            _write_extra(assets, name, content)
        _fsync_tree(tmp)
        return _publish(tmp, model_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def serving_function(model: keras.Model) -> tf.types.experimental.ConcreteFunction:
    """The `serving_default` signature: raw uint8 pixels in, probabilities and the argmax digit out."""

    @tf.function(
        input_signature=[tf.TensorSpec([None, *IMAGE_SHAPE], tf.uint8, name=INPUT_KEY)], autograph=False
    )
    def serve(image):
        probabilities = tf.cast(model(image, training=False), tf.float32)
        return {
            PROBABILITIES_KEY: probabilities,
            DIGIT_KEY: tf.argmax(probabilities, axis=-1, output_type=tf.int64),
        }

    return serve.get_concrete_function()


def _write_saved_model(model: keras.Model, path: Path) -> None:
    module = tf.Module()
    module.model = model
    # model.variables also holds the augmentation layers' seed-generator states, which the traced function
    # captures even though augmentation is inactive at inference; tracking them makes them reachable.
    module.model_variables = list(model.variables)
    module.serve = serving_function(model)
    tf.saved_model.save(module, str(path), signatures={SIGNATURE_NAME: module.serve})


def write_warmup_requests(path: Path, images: np.ndarray, model_name: str) -> None:
    """TFRecord of PredictionLog predict requests at a few batch sizes, replayed by TF Serving on load."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    sizes = [n for n in WARMUP_BATCH_SIZES if n <= len(images)] or [len(images)]
    with tf.io.TFRecordWriter(str(path)) as writer:
        for n in sizes:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=SIGNATURE_NAME)
            )
            request.inputs[INPUT_KEY].CopyFrom(tf.make_tensor_proto(images[:n], dtype=tf.uint8))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def _write_extra(assets: Path, name: str, content: bytes | str | os.PathLike[str]) -> None:
    target = assets / name
    if isinstance(content, bytes):
        target.write_bytes(content)
    else:
        shutil.copyfile(content, target)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def existing_versions(model_dir: Path) -> list[int]:
    """The version directories under model_dir, ascending (training.contract.version_of decides)."""
    if not model_dir.is_dir():
        return []
    return list(version_dirs(model_dir))


@contextlib.contextmanager
def _export_lock(model_dir: Path) -> Iterator[None]:
    with open(model_dir / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _publish(tmp: Path, model_dir: Path) -> Path:
    """Rename tmp to the next free version; the lock serialises exporters, the existence check guards."""
    with _export_lock(model_dir):
        version = (existing_versions(model_dir) or [0])[-1] + 1
        for _ in range(100):
            target = model_dir / str(version)
            if not target.exists():
                try:
                    os.rename(tmp, target)
                except OSError as exc:
                    if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise ExportError(f"{target}: cannot publish the version ({exc.strerror})") from None
                else:
                    _fsync_dir(model_dir)
                    return target
            version += 1
    raise ExportError(f"{model_dir}: could not find a free version number")
