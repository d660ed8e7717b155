"""The operations both front ends (gRPC and REST) expose, on numpy arrays and status protos.

Front ends translate wire formats; everything TF Serving decides (which servable, which signature, which
error) happens here or below.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2

from serving.local_server import tensors
from serving.local_server.errors import invalid_argument
from serving.local_server.model_manager import ModelManager
from serving.local_server.servable import DEFAULT_SIGNATURE, Servable, Signature, check_declared

SIGNATURE_DEF_FIELD = "signature_def"
_STATE = get_model_status_pb2.ModelVersionStatus.State


@dataclass(frozen=True)
class ModelRef:
    """What a ModelSpec (or a REST path) names: a model plus at most one of version and label."""

    name: str
    version: int | None = None
    label: str | None = None
    signature_name: str = ""

    @classmethod
    def from_spec(cls, spec: model_pb2.ModelSpec) -> ModelRef:
        choice = spec.WhichOneof("version_choice")
        return cls(
            name=spec.name,
            version=spec.version.value if choice == "version" else None,
            label=spec.version_label if choice == "version_label" else None,
            signature_name=spec.signature_name,
        )


@dataclass(frozen=True)
class Prediction:
    model_name: str
    version: int
    signature_name: str
    outputs: dict[str, np.ndarray]

    def model_spec(self) -> model_pb2.ModelSpec:
        spec = model_pb2.ModelSpec(name=self.model_name, signature_name=self.signature_name)
        spec.version.value = self.version
        return spec


class ServingCore:
    def __init__(self, manager: ModelManager, *, max_tensor_bytes: int) -> None:
        self.manager = manager
        self.max_tensor_bytes = max_tensor_bytes

    def metric_label(self, model_name: str) -> str:
        """The `model_name` metrics label: the name of a served model, else "" (request names are anyone's
        choice, and each distinct label value is a series kept forever)."""
        return model_name if self.manager.serves(model_name) else ""

    def servable(self, ref: ModelRef) -> Servable:
        return self.manager.resolve(ref.name, version=ref.version, label=ref.label)  # type: ignore[return-value]

    def signature(self, ref: ModelRef) -> tuple[Servable, Signature]:
        servable = self.servable(ref)
        return servable, servable.signature(ref.signature_name)

    def decode_inputs(
        self, signature: Signature, protos: Mapping[str, tensors.TensorProto]
    ) -> dict[str, np.ndarray]:
        """TensorProtos as arrays, once what they declare (dtype, shape, size) fits the signature and the
        limit: a proto with one value can declare billions of elements, so nothing is allocated before."""
        declared = {alias: tensors.declared(proto, alias) for alias, proto in protos.items()}
        check_declared(signature, declared)
        for alias, (dtype, shape) in declared.items():
            tensors.check_size(alias, dtype, shape, self.max_tensor_bytes)
        return {alias: tensors.to_numpy(proto, alias) for alias, proto in protos.items()}

    def predict(
        self,
        ref: ModelRef,
        inputs: Mapping[str, np.ndarray],
        output_filter: Sequence[str] = (),
        servable: Servable | None = None,
    ) -> Prediction:
        servable = servable or self.servable(ref)
        key = ref.signature_name or DEFAULT_SIGNATURE
        for alias, array in inputs.items():
            tensors.check_size(alias, tensors.dtype_enum(array), array.shape, self.max_tensor_bytes)
        outputs = servable.predict(key, inputs, output_filter)
        return Prediction(ref.name, servable.version, key, outputs)

    def status(self, ref: ModelRef) -> get_model_status_pb2.GetModelStatusResponse:
        """Like TF Serving, a label in the spec is ignored here: all versions are listed."""
        response = get_model_status_pb2.GetModelStatusResponse()
        for status in self.manager.model_status(ref.name, ref.version):
            entry = response.model_version_status.add(
                version=status.version, state=_STATE.Value(status.state)
            )
            entry.status.error_code = status.error_code.value[0]
            entry.status.error_message = status.error_message
        return response

    def metadata(
        self, ref: ModelRef, fields: Sequence[str]
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        if not fields:
            raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
        for field in fields:
            if field != SIGNATURE_DEF_FIELD:
                raise invalid_argument(f"Metadata field {field} is not supported")
        servable = self.servable(ref)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature_def in servable.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(signature_def)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
        return response
