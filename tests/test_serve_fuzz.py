"""Property tests of mnist-serve's inputs over real sockets: whatever a client sends over REST or gRPC, the
answer is a proper status, never a 500 or INTERNAL/UNKNOWN/DATA_LOSS.

Hypothesis generates JSON request bodies (any JSON, tensor-like nested lists of odd shapes and values, b64
objects), raw bytes, paths and methods for REST; TensorProtos with any dtype, declared shape (huge, negative,
many dimensions), values in the typed fields or tensor_content, model specs and output filters for gRPC. The
server runs with HOSTILE_LIMITS, so anything accepted is small enough to run.
"""

from __future__ import annotations

import json

import grpc
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    database=None,
)
TIMEOUT = 30
SERVER_FAULTS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}


@pytest.fixture(scope="module")
def channel(hostile_model_server):
    with grpc.insecure_channel(hostile_model_server.grpc_address) as channel:
        yield channel


# -- REST ----------------------------------------------------------------------------------------------------
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.integers(0, 255),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.just({"b64": "AAEC"}),
    st.just({"b64": "not base64!"}),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=40,
)


@st.composite
def tensors_as_lists(draw):
    """Nested lists close to an image batch: the right rank and sizes or nearly, with odd leaves."""
    rank = draw(st.integers(0, 5))
    sizes = [draw(st.sampled_from([0, 1, 2, 27, 28, 29])) for _ in range(rank)]
    leaf = draw(st.one_of(st.integers(-2, 300), st.floats(allow_nan=False), st.booleans(), scalars))
    value = leaf
    for size in reversed(sizes[1:]):
        value = [value] * size
    return [value] * sizes[0] if sizes else value


request_bodies = st.fixed_dictionaries(
    {},
    optional={
        "instances": st.one_of(tensors_as_lists(), json_values),
        "inputs": st.one_of(
            tensors_as_lists(), st.dictionaries(st.sampled_from(["image", "x"]), tensors_as_lists())
        ),
        "signature_name": st.one_of(st.sampled_from(["serving_default", "", "nope"]), json_values),
    },
)
predict_paths = st.sampled_from(
    [
        "/v1/models/mnist:predict",
        "/v1/models/mnist/versions/1:predict",
        "/v1/models/mnist/labels/stable:predict",
        "/v1/models/mnist/versions/99999999999999999999:predict",
        "/v1/models/%00:predict",
        "/v1/models/mnist:classify",
        "/v1/models/mnist:regress",
    ]
)


def assert_proper_rest_answer(response: requests.Response) -> None:
    assert response.status_code < 500 or response.status_code in (501, 503), (
        response.status_code,
        response.text[:300],
    )
    assert response.headers["Content-Type"] == "application/json"
    if response.status_code >= 400:
        assert isinstance(response.json()["error"], str)


@pytest.mark.slow
@FUZZ
@given(path=predict_paths, body=st.one_of(request_bodies, json_values))
def test_rest_predict_bodies_never_5xx(hostile_model_server, path, body):
    data = json.dumps(body).encode()
    response = requests.post(hostile_model_server.rest_url + path, data=data, timeout=TIMEOUT)
    assert_proper_rest_answer(response)


@pytest.mark.slow
@FUZZ
@given(
    path=predict_paths,
    data=st.one_of(
        st.binary(max_size=512),
        st.builds(
            lambda n, c: c * n, st.integers(0, 3000), st.sampled_from([b"[", b"{", b'{"a":', b"-", b"9"])
        ),
        st.builds(lambda s: s.encode("utf-8", "surrogatepass"), st.text(max_size=100)),
    ),
)
def test_rest_predict_raw_bytes_never_5xx(hostile_model_server, path, data):
    response = requests.post(hostile_model_server.rest_url + path, data=data, timeout=TIMEOUT)
    assert_proper_rest_answer(response)


@pytest.mark.slow
@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "FOO", "get"]),
    path=st.one_of(
        st.sampled_from(
            [
                "/v1/models/mnist",
                "/v1/models/mnist/metadata",
                "/v1/models/mnist/versions/1",
                "/v1/models/mnist/labels/stable/metadata",
                "/v1/models",
                "/v1/",
                "/monitoring/prometheus/metrics",
            ]
        ),
        st.text(
            st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters="#?"), max_size=40
        ).map(lambda text: "/v1/models/" + text),
    ),
)
def test_rest_paths_and_methods_never_5xx(hostile_model_server, method, path):
    response = requests.request(method, hostile_model_server.rest_url + path, timeout=TIMEOUT)
    if path == "/monitoring/prometheus/metrics" and method.upper() == "GET":
        assert response.status_code == 200
        return
    assert_proper_rest_answer(response)


# -- gRPC ----------------------------------------------------------------------------------------------------
dtypes = st.one_of(st.sampled_from(sorted(types_pb2.DataType.values())), st.integers(-5, 400))
dims = st.one_of(st.integers(-3, 30), st.sampled_from([28, 2**31, 2**40, 2**62, 2**63 - 1]))


@st.composite
def tensor_protos(draw) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=draw(st.one_of(st.just(types_pb2.DT_UINT8), dtypes)))
    shape = draw(
        st.one_of(st.just([1, 28, 28]), st.lists(dims, max_size=6), st.lists(st.just(1), max_size=80))
    )
    proto.tensor_shape.CopyFrom(
        tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in shape])
    )
    proto.tensor_shape.unknown_rank = draw(st.booleans()) and draw(st.booleans())
    source = draw(st.sampled_from(["none", "content", "int", "float", "int64", "string", "bool", "half"]))
    if source == "content":
        proto.tensor_content = draw(st.binary(max_size=3200))
    elif source == "int":
        proto.int_val.extend(draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=800)))
    elif source == "float":
        proto.float_val.extend(draw(st.lists(st.floats(width=32), max_size=50)))
    elif source == "int64":
        proto.int64_val.extend(draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=50)))
    elif source == "string":
        proto.string_val.extend(draw(st.lists(st.binary(max_size=20), max_size=20)))
    elif source == "bool":
        proto.bool_val.extend(draw(st.lists(st.booleans(), max_size=50)))
    elif source == "half":
        proto.half_val.extend(draw(st.lists(st.integers(0, 2**16 - 1), max_size=50)))
    return proto


specs = st.fixed_dictionaries(
    {"name": st.sampled_from(["mnist", "", "nope", "mnist\x00"])},
    optional={
        "version": st.integers(-(2**63), 2**63 - 1),
        "version_label": st.sampled_from(["stable", "", "nope"]),
        "signature_name": st.sampled_from(["serving_default", "", "__saved_model_init_op", "nope"]),
    },
)


def spec_into(spec: dict, target) -> None:
    target.name = spec["name"]
    if "version" in spec:
        target.version.value = spec["version"]
    elif "version_label" in spec:
        target.version_label = spec["version_label"]
    target.signature_name = spec.get("signature_name", "")


def assert_proper_status(call) -> None:
    try:
        call()
    except grpc.RpcError as error:
        assert error.code() not in SERVER_FAULTS, (error.code(), error.details())


@pytest.mark.slow
@FUZZ
@given(
    spec=specs,
    inputs=st.dictionaries(st.sampled_from(["image", "pixels", ""]), tensor_protos(), max_size=2),
    output_filter=st.lists(st.sampled_from(["digit", "probabilities", "logits", ""]), max_size=3),
    has_spec=st.booleans(),
)
def test_grpc_predict_never_internal(channel, spec, inputs, output_filter, has_spec):
    request = predict_pb2.PredictRequest(output_filter=output_filter)
    if has_spec:
        spec_into(spec, request.model_spec)
    for alias, proto in inputs.items():
        request.inputs[alias].CopyFrom(proto)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    assert_proper_status(lambda: stub.Predict(request, timeout=TIMEOUT))


@pytest.mark.slow
@FUZZ
@given(spec=specs, fields=st.lists(st.sampled_from(["signature_def", "", "x"]), max_size=2))
def test_grpc_status_and_metadata_never_internal(channel, spec, fields):
    status = get_model_status_pb2.GetModelStatusRequest()
    spec_into(spec, status.model_spec)
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=fields)
    spec_into(spec, metadata.model_spec)
    models = model_service_pb2_grpc.ModelServiceStub(channel)
    predictions = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    assert_proper_status(lambda: models.GetModelStatus(status, timeout=TIMEOUT))
    assert_proper_status(lambda: predictions.GetModelMetadata(metadata, timeout=TIMEOUT))
