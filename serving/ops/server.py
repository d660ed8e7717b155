"""The model server as `mnist-models` sees it: ModelService (status, reload config) and label resolution,
through the official tensorflow-serving-api stubs, each call with a deadline. The only module using gRPC.

`ModelServers` is every replica named by MODEL_SERVER_GRPC (one `host:port`, a comma-separated list, or
`dns:///name:port` for every address the name resolves to, as a headless Kubernetes Service lists its pods),
seen as one server: a change is pushed to each, and a version counts as AVAILABLE once each has loaded it.
Replicas also poll the config file, but only every 30-60 s: until then a replica without the canary would fail
every canary request it is sent."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from serving.ops.errors import LoadFailed, ServerError

_STATE_NAMES = {v: k for k, v in get_model_status_pb2.ModelVersionStatus.State.items()}
_UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


@dataclass(frozen=True)
class VersionState:
    version: int
    state: str  # START, LOADING, AVAILABLE, UNLOADING, END (TF Serving's ModelVersionStatus.State names)
    error_code: int = 0  # google.rpc code of the last load attempt; 0 is OK
    error_message: str = ""

    @property
    def failed(self) -> bool:
        return self.state == "END" and self.error_code != 0


class ModelServerClient:
    """A connection to TF Serving or mnist-serve at `target` ("host:port")."""

    def __init__(self, target: str, *, timeout_s: float = 10.0) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(target)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ModelServerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def version_states(self, model_name: str) -> dict[int, VersionState]:
        """Every version the server knows for the model; empty when it knows none (NOT_FOUND)."""
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model_name
        try:
            response = self._models.GetModelStatus(request, timeout=self.timeout_s)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return {}
            raise self._error("GetModelStatus", error) from None
        return {
            s.version: VersionState(
                s.version,
                _STATE_NAMES.get(s.state, str(s.state)),
                s.status.error_code,
                s.status.error_message,
            )
            for s in response.model_version_status
        }

    def label_version(self, model_name: str, label: str) -> int | None:
        """The version the server resolves `label` to (GetModelMetadata by label); None if it has none."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = model_name
        request.model_spec.version_label = label
        try:
            response = self._predictions.GetModelMetadata(request, timeout=self.timeout_s)
        except grpc.RpcError as error:
            if error.code() in _UNREACHABLE:
                raise self._error("GetModelMetadata", error) from None
            return None  # NOT_FOUND / INVALID_ARGUMENT / FAILED_PRECONDITION: the label serves nothing
        return response.model_spec.version.value

    def reload(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """Apply `config` with HandleReloadConfigRequest; a rejected config raises ServerError."""
        request = model_management_pb2.ReloadConfigRequest()
        request.config.CopyFrom(config)
        try:
            response = self._models.HandleReloadConfigRequest(request, timeout=self.timeout_s)
        except grpc.RpcError as error:
            raise self._error("HandleReloadConfigRequest", error) from None
        if response.status.error_code != 0:
            raise ServerError(
                f"model server {self.target} rejected the config: {response.status.error_message}"
            )

    def wait_available(
        self,
        model_name: str,
        version: int,
        *,
        timeout_s: float,
        before: VersionState | None = None,
        on_poll: Callable[[VersionState | None, float], None] | None = None,
        poll_s: float = 0.2,
    ) -> VersionState:
        """Poll GetModelStatus until `version` is AVAILABLE; LoadFailed when its load fails or on timeout.

        `before` is the version's state before the config push: an END-with-error identical to it is the
        outcome of an older attempt, not of this one, until the server reports a new state."""
        start = time.monotonic()
        stale = before
        while True:
            state = self.version_states(model_name).get(version)
            elapsed = time.monotonic() - start
            if on_poll is not None:
                on_poll(state, elapsed)
            if state is not None:
                if state.state == "AVAILABLE":
                    return state
                if state != stale:
                    stale = None
                if state.failed and stale is None:
                    reason = state.error_message or f"error code {state.error_code}"
                    raise LoadFailed(f"version {version} of {model_name} failed to load: {reason}")
            if elapsed >= timeout_s:
                if state is not None and state.failed:  # the earlier attempt's error, never replaced
                    reason = state.error_message or f"error code {state.error_code}"
                    raise LoadFailed(
                        f"version {version} of {model_name} failed to load earlier ({reason}), and the "
                        f"server did not try it again within {timeout_s:g}s"
                    )
                seen = state.state if state else "not reported"
                raise LoadFailed(
                    f"version {version} of {model_name} not AVAILABLE after {timeout_s:g}s ({seen})"
                )
            time.sleep(poll_s)

    def _error(self, method: str, error: grpc.RpcError) -> ServerError:
        code = error.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            reason = (error.details() or "no details").rsplit(": ", 1)[-1]  # gRPC nests its reasons
            return ServerError(f"model server {self.target} unreachable ({method}: {reason})")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            late = ServerError(
                f"model server {self.target} did not answer {method} within {self.timeout_s:g}s"
            )
            late.may_have_applied = True  # the server may have done it all and only answered too late
            return late
        return ServerError(f"model server {self.target}: {method} failed: {code.name}: {error.details()}")


DNS_SCHEME = "dns:///"


def replica_addresses(spec: str) -> list[str]:
    """The `host:port` of each replica MODEL_SERVER_GRPC names; ServerError when a dns:/// name resolves to
    nothing. A plain `host:port` is kept as it is (gRPC resolves it)."""
    if not spec.startswith(DNS_SCHEME):
        return [part.strip() for part in spec.split(",") if part.strip()]
    host, _, port = spec[len(DNS_SCHEME) :].rpartition(":")
    host = host.strip("[]")
    try:
        found = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (OSError, ValueError) as error:
        raise ServerError(f"model servers {spec}: cannot resolve {host!r} ({error})") from None
    ips = sorted({info[4][0] for info in found})
    return [f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}" for ip in ips]


class ModelServers:
    """Every replica of the model server, used like one `ModelServerClient` (module docstring)."""

    def __init__(self, spec: str, *, timeout_s: float = 10.0) -> None:
        self.target = spec
        self.addresses = replica_addresses(spec)
        if not self.addresses:
            raise ServerError(f"no model server address in {spec!r}")
        self._clients = [ModelServerClient(address, timeout_s=timeout_s) for address in self.addresses]

    def close(self) -> None:
        for client in self._clients:
            client.close()

    def __enter__(self) -> ModelServers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def version_states(self, model_name: str) -> dict[int, VersionState]:
        """Each version's state on the replica furthest from serving it: AVAILABLE only where every replica
        has it; UNKNOWN when some replica does not know the version at all."""
        seen = [client.version_states(model_name) for client in self._clients]
        merged: dict[int, VersionState] = {}
        for version in sorted(set().union(*seen)):
            states = [on_replica.get(version, VersionState(version, "UNKNOWN")) for on_replica in seen]
            merged[version] = next((s for s in states if s.state != "AVAILABLE"), states[0])
        return merged

    def label_version(self, model_name: str, label: str) -> int | None:
        """The version every replica resolves `label` to; None when one resolves it to nothing, or they
        differ."""
        found = {client.label_version(model_name, label) for client in self._clients}
        return found.pop() if len(found) == 1 else None

    def reload(
        self,
        config: model_server_config_pb2.ModelServerConfig,
        *,
        previous: model_server_config_pb2.ModelServerConfig,
    ) -> None:
        """Push `config` to each replica in turn. When one fails, the replicas that took it get `previous`
        back, so the fleet is not left split, and so does the failing one when it may have taken it (it
        answered too late); the error names them (and any still on `config`)."""
        took: list[ModelServerClient] = []
        for client in self._clients:
            try:
                client.reload(config)
            except ServerError as error:
                undo = [*took, client] if error.may_have_applied else took
                if undo:
                    error.message += _put_back(undo, previous)
                    error.args = (error.message,)
                raise
            took.append(client)

    def wait_available(
        self,
        model_name: str,
        version: int,
        *,
        timeout_s: float,
        before: VersionState | None = None,
        on_poll: Callable[[VersionState | None, float], None] | None = None,
        poll_s: float = 0.2,
    ) -> VersionState:
        """`version` AVAILABLE on every replica, within `timeout_s` for them all."""
        deadline = time.monotonic() + timeout_s
        ready = None
        for client in self._clients:
            ready = client.wait_available(
                model_name,
                version,
                timeout_s=max(deadline - time.monotonic(), 0.0),
                before=before,
                on_poll=on_poll,
                poll_s=poll_s,
            )
        return ready


def _put_back(clients: list[ModelServerClient], previous: model_server_config_pb2.ModelServerConfig) -> str:
    """Push `previous` to `clients`; what happened, to append to the error that made it necessary."""
    back, notes = [], []
    for client in clients:
        try:
            client.reload(previous)
        except ServerError as error:
            notes.append(
                f"; putting the previous config back on {client.target} failed ({error.message}): it serves "
                "the new config"
            )
        else:
            back.append(client.target)
    if back:
        notes.insert(0, f"; the previous config is back on {', '.join(back)}")
    return "".join(notes)
