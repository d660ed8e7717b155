"""One loaded model version: the SavedModel's signatures, input checks and the call itself.

TensorFlow is imported here and only here (with tensorflow_serving protos that pull it in anyway).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2

from serving.local_server import tensors
from serving.local_server.errors import ServingError, failed_precondition, invalid_argument

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving's cap on replayed warmup records

Runner = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class TensorSpec:
    dtype: int  # tensorflow DataType enum
    shape: tuple[int, ...] | None  # -1 for an unknown dimension; None for unknown rank

    def describe(self) -> str:
        shape = "unknown" if self.shape is None else "[" + ",".join(str(d) for d in self.shape) + "]"
        return f"{tensors.dtype_name(self.dtype)} {shape}"


@dataclass
class Signature:
    key: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    run: Runner  # the unbatched call: all inputs in, all outputs out
    batched_run: Runner | None = None  # set when server-side batching serves this signature

    @property
    def batchable(self) -> bool:
        """Every input and output has a leading batch dimension of unknown size."""
        specs = list(self.inputs.values()) + list(self.outputs.values())
        return all(s.shape is not None and len(s.shape) >= 1 and s.shape[0] == -1 for s in specs)


@dataclass
class Servable:
    name: str
    version: int
    path: Path
    signatures: dict[str, Signature]
    signature_defs: dict[str, meta_graph_pb2.SignatureDef]
    handle: object = field(repr=False, default=None)  # keeps the loaded TF object (and its functions) alive

    def signature(self, key: str) -> Signature:
        key = key or DEFAULT_SIGNATURE
        try:
            return self.signatures[key]
        except KeyError:
            raise failed_precondition(f'Serving signature key "{key}" not found.') from None

    def predict(
        self, signature_key: str, inputs: Mapping[str, np.ndarray], output_filter: Sequence[str] = ()
    ) -> dict[str, np.ndarray]:
        """Check the inputs, run the signature (batched if enabled), keep the filtered outputs."""
        signature = self.signature(signature_key)
        check_inputs(signature, inputs)
        wanted = check_output_filter(signature, output_filter)
        runner = signature.batched_run or signature.run
        outputs = runner(inputs)
        return {alias: outputs[alias] for alias in wanted}


def check_inputs(signature: Signature, inputs: Mapping[str, np.ndarray]) -> None:
    """TF Serving's checks (predict_util.cc) plus dtype and shape; all INVALID_ARGUMENT."""
    check_declared(signature, {alias: (tensors.dtype_enum(a), a.shape) for alias, a in inputs.items()})
    batch_sizes = {array.shape[0] for array in inputs.values() if array.ndim}
    if signature.batchable and len(batch_sizes) > 1:
        raise invalid_argument(f"inputs disagree on the batch size: {sorted(batch_sizes)}")


def check_declared(signature: Signature, declared: Mapping[str, tuple[int, tuple[int, ...]]]) -> None:
    """Input aliases, dtypes and shapes ({alias: (dtype enum, shape)}) against the signature: the same rules
    for decoded arrays and for what a TensorProto declares before it is decoded."""
    expected = set(signature.inputs)
    sent = set(declared)
    if sent != expected:
        if len(sent) == len(expected):
            alias = sorted(sent - expected)[0]
            raise invalid_argument(
                f"input tensor alias not found in signature: {alias}. Inputs expected to be in the set "
                f"{{{','.join(sorted(expected))}}}."
            )
        raise invalid_argument(
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
            f"Sent extra: {{{','.join(sorted(sent - expected))}}}. "
            f"Missing but required: {{{','.join(sorted(expected - sent))}}}."
        )
    for alias, (dtype, shape) in declared.items():
        spec = signature.inputs[alias]
        if dtype != spec.dtype:
            index = sorted(signature.inputs).index(alias)
            raise invalid_argument(
                f"Expects arg[{index}] to be {tensors.dtype_name(spec.dtype)} but "
                f"{tensors.dtype_name(dtype)} is provided (input '{alias}')"
            )
        if spec.shape is not None and (
            len(spec.shape) != len(shape)
            or any(w not in (-1, g) for w, g in zip(spec.shape, shape, strict=True))
        ):
            raise invalid_argument(
                f"input '{alias}' has shape [{','.join(map(str, shape))}] but the signature expects "
                f"[{','.join(map(str, spec.shape))}] (-1: any size)"
            )


def check_output_filter(signature: Signature, output_filter: Sequence[str]) -> list[str]:
    if not output_filter:
        return list(signature.outputs)
    seen: list[str] = []
    for alias in output_filter:
        if alias not in signature.outputs:
            raise invalid_argument(
                f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                f"{{{','.join(sorted(signature.outputs))}}}."
            )
        if alias in seen:
            raise invalid_argument(f"duplicate output tensor alias: {alias}")
        seen.append(alias)
    return seen


def _tensor_spec(info: meta_graph_pb2.TensorInfo) -> TensorSpec:
    shape = None if info.tensor_shape.unknown_rank else tuple(d.size for d in info.tensor_shape.dim)
    return TensorSpec(dtype=info.dtype, shape=shape)


def _read_signature_defs(path: Path) -> dict[str, meta_graph_pb2.SignatureDef]:
    pb = path / "saved_model.pb"
    if not pb.is_file():
        raise ServingError(
            grpc.StatusCode.NOT_FOUND,
            f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {path}",
        )
    saved_model = saved_model_pb2.SavedModel()
    try:
        saved_model.ParseFromString(pb.read_bytes())
    except Exception as exc:  # protobuf raises DecodeError, or RuntimeError on some builds
        raise ServingError(grpc.StatusCode.DATA_LOSS, f"cannot parse {pb}: {exc}") from None
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    raise ServingError(grpc.StatusCode.NOT_FOUND, f"no MetaGraphDef tagged 'serve' in {pb}")


def _make_runner(function: Callable, outputs: Sequence[str]) -> Runner:
    def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            result = function(**{k: tf.constant(v) for k, v in inputs.items()})
        except tf.errors.OpError as exc:
            raise ServingError(_grpc_code(exc.error_code), exc.message) from None
        except (TypeError, ValueError) as exc:
            raise invalid_argument(str(exc)) from None
        return {alias: result[alias].numpy() for alias in outputs}

    return run


def _grpc_code(tf_code: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == tf_code:
            return code
    return grpc.StatusCode.UNKNOWN


def load_servable(name: str, version: int, path: Path, *, warmup: bool = True) -> Servable:
    """Load a SavedModel version and replay its warmup records; raises ServingError on any failure."""
    started = time.perf_counter()
    signature_defs = _read_signature_defs(path)
    try:
        loaded = tf.saved_model.load(str(path), tags=["serve"])
    except Exception as exc:  # a broken export can fail in many ways; report it as the version's status
        raise ServingError(grpc.StatusCode.UNKNOWN, f"failed to load SavedModel at {path}: {exc}") from None
    signatures: dict[str, Signature] = {}
    for key, signature_def in signature_defs.items():
        if key.startswith("__") or key not in loaded.signatures:
            continue  # e.g. __saved_model_init_op: listed in metadata, not callable
        outputs = {alias: _tensor_spec(info) for alias, info in signature_def.outputs.items()}
        signatures[key] = Signature(
            key=key,
            inputs={alias: _tensor_spec(info) for alias, info in signature_def.inputs.items()},
            outputs=outputs,
            run=_make_runner(loaded.signatures[key], list(outputs)),
        )
    servable = Servable(name, version, path, signatures, signature_defs, handle=loaded)
    replayed = replay_warmup(servable) if warmup else 0
    log.info(
        "servable loaded",
        extra={
            "model": name,
            "version": version,
            "path": str(path),
            "warmup_records": replayed,
            "seconds": round(time.perf_counter() - started, 3),
        },
    )
    return servable


def _warmup_requests(path: Path) -> Iterator[prediction_log_pb2.PredictionLog]:
    for index, record in enumerate(tf.data.TFRecordDataset(str(path)).as_numpy_iterator()):
        if index >= MAX_WARMUP_RECORDS:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}",
            )
        entry = prediction_log_pb2.PredictionLog()
        entry.ParseFromString(record)
        yield entry


def replay_warmup(servable: Servable, *, iterations: int = 1) -> int:
    """Run every predict request in assets.extra/tf_serving_warmup_requests; a failure fails the load."""
    path = servable.path / WARMUP_FILE
    if not path.is_file():
        return 0
    count = 0
    try:
        for entry in _warmup_requests(path):
            if entry.WhichOneof("log_type") != "predict_log":
                raise invalid_argument(f"Unsupported log_type for warmup: {entry.WhichOneof('log_type')}")
            request = entry.predict_log.request
            inputs = {k: tensors.to_numpy(v, k) for k, v in request.inputs.items()}
            for _ in range(max(1, iterations)):
                servable.predict(request.model_spec.signature_name, inputs, list(request.output_filter))
            count += 1
    except ServingError as exc:
        raise ServingError(
            exc.code, f"warmup failed for {servable.name} version {servable.version}: {exc.message}"
        ) from None
    except tf.errors.OpError as exc:
        raise ServingError(
            grpc.StatusCode.DATA_LOSS, f"cannot read warmup records at {path}: {exc.message}"
        ) from None
    return count
