"""Reading an exported version: its signature (as `saved_model_cli show` prints it), the contract check, its
metrics.json and re-scoring it on the test set through the serving signature."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from training.contract import (
    ASSETS_EXTRA,
    DIGIT_KEY,
    IMAGE_SHAPE,
    INPUT_KEY,
    METRICS_FILE,
    NUM_CLASSES,
    PROBABILITIES_KEY,
    SIGNATURE_NAME,
    WARMUP_FILE,
)
from training.errors import ExportError

# What the model server and the gateway rely on: key -> (dtype name, shape with -1 for the batch).
CONTRACT_INPUTS = {INPUT_KEY: ("DT_UINT8", (-1, *IMAGE_SHAPE))}
CONTRACT_OUTPUTS = {PROBABILITIES_KEY: ("DT_FLOAT", (-1, NUM_CLASSES)), DIGIT_KEY: ("DT_INT64", (-1,))}


def check_version_dir(version_dir: Path) -> Path:
    version_dir = Path(version_dir)
    if not version_dir.is_dir():
        raise ExportError(f"{version_dir}: not a directory")
    if not (version_dir / "saved_model.pb").is_file():
        raise ExportError(f"{version_dir}: no saved_model.pb (not an exported model version)")
    return version_dir


def read_saved_model(version_dir: Path):
    """The SavedModel protocol buffer (parsed without loading the graph)."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    path = check_version_dir(version_dir) / "saved_model.pb"
    saved_model = saved_model_pb2.SavedModel()
    try:
        saved_model.ParseFromString(path.read_bytes())
    except DecodeError:
        raise ExportError(f"{path}: corrupt SavedModel protocol buffer") from None
    return saved_model


def _dtype_name(dtype: int) -> str:
    from tensorflow.core.framework import types_pb2

    return types_pb2.DataType.Name(dtype)


def _shape(tensor_info) -> tuple[int, ...] | None:
    if tensor_info.tensor_shape.unknown_rank:
        return None
    return tuple(d.size for d in tensor_info.tensor_shape.dim)


def _format_shape(shape: tuple[int, ...] | None) -> str:
    if shape is None:
        return "unknown_rank"
    return "(" + ", ".join(str(d) for d in shape) + ")"  # saved_model_cli prints (-1) for one dimension


def describe_signatures(version_dir: Path) -> str:
    """The signatures in the layout of `saved_model_cli show --dir D --all`."""
    lines = []
    for meta_graph in read_saved_model(version_dir).meta_graphs:
        tags = ", ".join(meta_graph.meta_info_def.tags)
        lines.append(f"MetaGraphDef with tag-set: '{tags}' contains the following SignatureDefs:")
        for name in sorted(meta_graph.signature_def):
            if name.startswith("__"):
                continue  # internal (e.g. __saved_model_init_op), as saved_model_cli hides them
            signature = meta_graph.signature_def[name]
            lines += ["", f"signature_def['{name}']:"]
            for title, tensors in (("input", signature.inputs), ("output", signature.outputs)):
                lines.append(f"  The given SavedModel SignatureDef contains the following {title}(s):")
                for key in sorted(tensors):
                    info = tensors[key]
                    lines += [
                        f"    {title}s['{key}'] tensor_info:",
                        f"        dtype: {_dtype_name(info.dtype)}",
                        f"        shape: {_format_shape(_shape(info))}",
                        f"        name: {info.name}",
                    ]
            lines.append(f"  Method name is: {signature.method_name}")
    return "\n".join(lines)


def contract_violations(version_dir: Path) -> list[str]:
    """Differences between the exported `serving_default` signature and the contract (empty when it holds)."""
    serving = [mg for mg in read_saved_model(version_dir).meta_graphs if "serve" in mg.meta_info_def.tags]
    if not serving:
        return ["no meta graph tagged 'serve'"]
    signatures = serving[0].signature_def
    if SIGNATURE_NAME not in signatures:
        return [f"no signature '{SIGNATURE_NAME}'"]
    signature = signatures[SIGNATURE_NAME]
    problems = []
    for kind, actual, expected in (
        ("input", signature.inputs, CONTRACT_INPUTS),
        ("output", signature.outputs, CONTRACT_OUTPUTS),
    ):
        if set(actual) != set(expected):
            problems.append(f"{kind}s are {sorted(actual)}, expected {sorted(expected)}")
        for key, (dtype, shape) in expected.items():
            if key not in actual:
                continue
            got = (_dtype_name(actual[key].dtype), _shape(actual[key]))
            if got != (dtype, shape):
                problems.append(
                    f"{kind} '{key}' is {got[0]} {_format_shape(got[1])}, expected {dtype} {shape}"
                )
    for name in (WARMUP_FILE, METRICS_FILE):
        if not (Path(version_dir) / ASSETS_EXTRA / name).is_file():
            problems.append(f"{ASSETS_EXTRA}/{name} is missing")
    return problems


def read_metrics(version_dir: Path) -> dict | None:
    path = Path(version_dir) / ASSETS_EXTRA / METRICS_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise ExportError(f"{path}: not valid JSON") from None


def predict_with_signature(version_dir: Path, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Probabilities for images (uint8 [N, 28, 28]) through the exported `serving_default` signature."""
    import tensorflow as tf

    check_version_dir(version_dir)
    try:
        serve = tf.saved_model.load(str(version_dir)).signatures[SIGNATURE_NAME]
    except (KeyError, ValueError, OSError, tf.errors.OpError) as exc:
        raise ExportError(f"{version_dir}: cannot load the model ({str(exc).splitlines()[0]})") from None
    batches = [
        serve(**{INPUT_KEY: tf.constant(images[i : i + batch_size])})[PROBABILITIES_KEY].numpy()
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(batches)
