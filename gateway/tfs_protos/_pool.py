"""The descriptor pool holding the gateway's TF Serving protos, kept apart from protobuf's default pool.

Our messages carry the official full names (`tensorflow.TensorProto`, `tensorflow.serving.PredictRequest`)
so that the wire format and the gRPC method paths are identical to TF Serving's. The default pool refuses a
second definition of a full name, and any process that also imports TensorFlow (tests, tools) already holds
the official ones there. The generated `*_pb2.py` modules therefore import this module in place of
`google.protobuf.descriptor_pool` (see `generate.py`) and register into this pool instead.
"""

from __future__ import annotations

from google.protobuf import descriptor_pool, wrappers_pb2

_POOL = descriptor_pool.DescriptorPool()
# model.proto imports google/protobuf/wrappers.proto (ModelSpec.version is an Int64Value).
_POOL.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)


def Default() -> descriptor_pool.DescriptorPool:  # the name the generated code calls
    return _POOL
