"""TensorProto <-> numpy and JSON values -> numpy, without calling TensorFlow.

Outputs are written the way TF Serving writes them by default (``AsProtoField``: the typed ``*_val`` field,
not ``tensor_content``); inputs are read in either form.
"""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from serving.local_server.errors import invalid_argument

TensorProto = tensor_pb2.TensorProto

# DataType -> (numpy dtype, TensorProto field holding the values)
_DTYPES: dict[int, tuple[np.dtype, str]] = {
    types_pb2.DT_FLOAT: (np.dtype(np.float32), "float_val"),
    types_pb2.DT_DOUBLE: (np.dtype(np.float64), "double_val"),
    types_pb2.DT_INT32: (np.dtype(np.int32), "int_val"),
    types_pb2.DT_UINT8: (np.dtype(np.uint8), "int_val"),
    types_pb2.DT_INT16: (np.dtype(np.int16), "int_val"),
    types_pb2.DT_INT8: (np.dtype(np.int8), "int_val"),
    types_pb2.DT_UINT16: (np.dtype(np.uint16), "int_val"),
    types_pb2.DT_INT64: (np.dtype(np.int64), "int64_val"),
    types_pb2.DT_UINT32: (np.dtype(np.uint32), "uint32_val"),
    types_pb2.DT_UINT64: (np.dtype(np.uint64), "uint64_val"),
    types_pb2.DT_BOOL: (np.dtype(np.bool_), "bool_val"),
    types_pb2.DT_HALF: (np.dtype(np.float16), "half_val"),
    types_pb2.DT_STRING: (np.dtype(object), "string_val"),
}
# numpy's own limit is 64 dimensions (32 before numpy 2); no model input comes close.
MAX_RANK = 32
_BY_NUMPY = {dtype: enum for enum, (dtype, _) in _DTYPES.items() if enum != types_pb2.DT_STRING}


def dtype_name(enum: int) -> str:
    """'uint8' for DT_UINT8: how TF names a dtype in its error messages."""
    name = types_pb2.DataType.Name(enum) if enum in types_pb2.DataType.values() else str(enum)
    return name.removeprefix("DT_").lower()


def numpy_dtype(enum: int) -> np.dtype:
    try:
        return _DTYPES[enum][0]
    except KeyError:
        raise invalid_argument(f"unsupported tensor dtype {dtype_name(enum)}") from None


def dtype_enum(array: np.ndarray) -> int:
    if array.dtype.kind in "OSU":
        return types_pb2.DT_STRING
    try:
        return _BY_NUMPY[array.dtype]
    except KeyError:
        raise invalid_argument(f"unsupported numpy dtype {array.dtype}") from None


def declared(proto: TensorProto, name: str = "") -> tuple[int, tuple[int, ...]]:
    """(dtype, shape) as the proto states them, checked for sanity only: nothing is decoded or allocated."""
    where = f" {name}" if name else ""
    if proto.tensor_shape.unknown_rank:
        raise invalid_argument(f"tensor parsing error:{where} unknown rank")
    if len(proto.tensor_shape.dim) > MAX_RANK:
        raise invalid_argument(
            f"tensor parsing error:{where} rank {len(proto.tensor_shape.dim)} exceeds {MAX_RANK}"
        )
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    if any(size < 0 for size in shape):
        raise invalid_argument(f"tensor parsing error:{where} negative dimension in shape {list(shape)}")
    if proto.dtype not in _DTYPES:
        raise invalid_argument(f"tensor parsing error:{where} unsupported dtype {dtype_name(proto.dtype)}")
    return proto.dtype, shape


def check_size(name: str, enum: int, shape: tuple[int, ...], max_bytes: int) -> None:
    """INVALID_ARGUMENT when a tensor of ``shape`` would take more than ``max_bytes`` (exact integer math: a
    shape of 2**62 x 28 x 28 must not wrap around to something small)."""
    size = math.prod(shape) * numpy_dtype(enum).itemsize
    if size > max_bytes:
        raise invalid_argument(
            f"input '{name}' of shape [{','.join(map(str, shape))}] would take {size} bytes, over the "
            f"limit of {max_bytes} bytes per tensor"
        )


def to_numpy(proto: TensorProto, name: str = "") -> np.ndarray:
    """Decode a TensorProto (tensor_content or typed values, TF's fill rules); INVALID_ARGUMENT if broken.
    One value may declare a shape of billions (TF fills the rest): call check_size on ``declared`` first."""
    where = f" {name}" if name else ""
    _, shape = declared(proto, name)
    dtype, field = _DTYPES[proto.dtype]
    count = math.prod(shape)
    if proto.tensor_content and proto.dtype != types_pb2.DT_STRING:
        if len(proto.tensor_content) != count * dtype.itemsize:
            raise invalid_argument(
                f"tensor parsing error:{where} tensor_content has {len(proto.tensor_content)} bytes, "
                f"shape {list(shape)} of {dtype_name(proto.dtype)} needs {count * dtype.itemsize}"
            )
        return np.frombuffer(proto.tensor_content, dtype=dtype).reshape(shape)
    values = getattr(proto, field)
    if len(values) > count:  # counted before anything is converted: 60 million values cost seconds and GBs
        raise invalid_argument(
            f"tensor parsing error:{where} {len(values)} values for shape {list(shape)} ({count} elements)"
        )
    if proto.dtype == types_pb2.DT_HALF:
        flat = np.asarray(values, dtype=np.uint16).view(np.float16)
    elif proto.dtype == types_pb2.DT_STRING:
        flat = np.empty(len(values), dtype=object)
        flat[:] = list(values)
    else:
        flat = np.asarray(values, dtype=dtype if dtype.kind != "u" or dtype.itemsize >= 4 else np.int64)
        if flat.dtype != dtype:
            if flat.size and (flat.min() < np.iinfo(dtype).min or flat.max() > np.iinfo(dtype).max):
                raise invalid_argument(f"tensor parsing error:{where} value out of range for {dtype}")
            flat = flat.astype(dtype)
    if len(flat) == count:
        return flat.reshape(shape)
    # TF fills the tail with the last value given (zeros when none is).
    filled = np.empty(count, dtype=dtype)
    filled[: len(flat)] = flat
    filled[len(flat) :] = flat[-1] if len(flat) else (b"" if dtype.kind == "O" else 0)
    return filled.reshape(shape)


def to_proto(array: np.ndarray) -> TensorProto:
    """Encode like TF Serving's default (typed ``*_val`` fields)."""
    array = np.asarray(array)
    enum = dtype_enum(array)
    proto = TensorProto(
        dtype=enum,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(s)) for s in array.shape]
        ),
    )
    field = _DTYPES[enum][1]
    flat = array.ravel()
    if enum == types_pb2.DT_HALF:
        proto.half_val.extend(flat.view(np.uint16).tolist())
    elif enum == types_pb2.DT_STRING:
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
    else:
        getattr(proto, field).extend(flat.tolist())
    return proto


def from_json(value: Any, enum: int, name: str) -> np.ndarray:
    """A JSON value (nested lists, scalars, {"b64": ...} for strings) as an array of dtype ``enum``."""
    dtype = numpy_dtype(enum)
    if enum == types_pb2.DT_STRING:
        return _strings_from_json(value, name)
    try:
        array = np.array(value)
    except ValueError:
        raise invalid_argument(
            f"input {name}: lists of unequal lengths (ragged tensors are not supported)"
        ) from None
    if array.dtype == object or array.dtype.kind in "SU":
        raise invalid_argument(
            f"input {name}: expected nested lists of {dtype_name(enum)} values of equal length"
        )
    if array.size == 0:
        return array.astype(dtype)
    if dtype.kind in "iu":
        if array.dtype.kind == "f" and not np.all(np.equal(np.mod(array, 1), 0)):
            raise invalid_argument(
                f"input {name}: expected integers for dtype {dtype_name(enum)}, got floats"
            )
        if array.dtype.kind == "b":
            raise invalid_argument(
                f"input {name}: expected integers for dtype {dtype_name(enum)}, got booleans"
            )
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise invalid_argument(
                f"input {name}: value out of range for {dtype_name(enum)} [{info.min}, {info.max}]"
            )
    elif dtype.kind == "b" and array.dtype.kind != "b":
        raise invalid_argument(f"input {name}: expected booleans")
    elif dtype.kind == "f" and array.dtype.kind not in "fiu":
        raise invalid_argument(f"input {name}: expected numbers for dtype {dtype_name(enum)}")
    return array.astype(dtype)


def _strings_from_json(value: Any, name: str) -> np.ndarray:
    def decode(item: Any) -> Any:
        if isinstance(item, list):
            return [decode(x) for x in item]
        if isinstance(item, dict) and set(item) == {"b64"} and isinstance(item["b64"], str):
            try:
                return base64.b64decode(item["b64"], validate=True)
            except ValueError:
                raise invalid_argument(f"input {name}: invalid base64") from None
        if isinstance(item, str):
            return item.encode()
        raise invalid_argument(f"input {name}: expected strings or {{'b64': ...}} objects")

    decoded = decode(value)
    array = np.empty(np.shape(np.array(decoded, dtype=object)), dtype=object)
    array[...] = decoded if array.ndim else decoded
    return array


def to_json(array: np.ndarray) -> Any:
    """An output as JSON (UTF-8 strings as text, other bytes as {"b64": ...}, as TF Serving does)."""
    if array.dtype == object:

        def encode(item: Any) -> Any:
            if isinstance(item, list):
                return [encode(x) for x in item]
            try:
                return item.decode("utf-8")
            except UnicodeDecodeError:
                return {"b64": base64.b64encode(item).decode()}

        return encode(array.tolist())
    if array.dtype in (np.float32, np.float16):
        # str() of a numpy float32 is its shortest round-tripping form: 0.1, not 0.10000000149011612.
        shortest = np.array([float(str(v)) for v in array.ravel()], dtype=object)
        return shortest.reshape(array.shape).tolist()
    return array.tolist()
