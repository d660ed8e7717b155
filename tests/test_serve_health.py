"""mnist-serve's grpc.health.v1.Health: what a client-side load balancer watches.

The model manager runs on a real directory tree with a recording loader (no TensorFlow); the health service
is served by a real gRPC server on a socket and read with the official health stubs (Check and Watch).
"""

from __future__ import annotations

import queue
import threading
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deploy.local.readiness import free_port
from serving.local_server.grpc_service import create_grpc_server
from serving.local_server.health import ModelHealth, service_name, serving_names
from serving.local_server.metrics import ServerMetrics
from tests.test_serve_model_manager import RecordingLoader, config_for, make_versions, manager_for

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
ONLY_1 = "model_version_policy { specific { versions: 1 } }"


def test_names_and_their_rule():
    names = serving_names(
        {
            "m": (frozenset({1}), {"stable": 1, "canary": 2}),
            "other": (frozenset(), {}),
        }
    )
    assert names == {"": False, "m": True, "m:stable": True, "m:canary": False, "other": False}
    # A label pointing nowhere does not take the whole server out; a model without a version does.
    assert serving_names({"m": (frozenset({1}), {"canary": 2})})[""] is True
    assert serving_names({}) == {"": False}
    assert service_name("m", "stable") == "m:stable" and service_name("m") == "m"


def test_the_gateway_watches_the_name_the_server_reports():
    from gateway.model_client import health_service

    assert health_service("mnist", "stable") == service_name("mnist", "stable")
    assert health_service("mnist", None) == service_name("mnist")


class HealthServer:
    """The manager's ModelHealth on a real gRPC server (the server's own wiring: create_grpc_server)."""

    def __init__(self, manager) -> None:
        from serving.local_server.core import ServingCore

        self.health = ModelHealth(manager)
        core = ServingCore(manager, max_tensor_bytes=1024)
        self.server, port = create_grpc_server(
            core, ServerMetrics(), address="127.0.0.1", port=free_port(), max_threads=2, health=self.health
        )
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = health_pb2_grpc.HealthStub(self.channel)

    def check(self, name: str) -> int:
        return self.stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status

    def close(self) -> None:
        self.channel.close()
        self.server.stop(None).wait()


@pytest.fixture
def served(tmp_path):
    made = []

    def serve(manager) -> HealthServer:
        made.append(HealthServer(manager))
        return made[-1]

    yield serve
    for server in made:
        server.close()


def test_not_serving_until_the_labelled_version_is_available(tmp_path, served):
    base = tmp_path / "m"
    manager = manager_for(RecordingLoader(), allow_version_labels_for_unavailable_models=True)
    server = served(manager)
    assert server.check("") == NOT_SERVING  # no model yet (the library's default would say SERVING)
    make_versions(base, 1)
    manager.start(config_for(base, ONLY_1, {"stable": 2}))  # `stable` names a version not on disk
    assert (server.check(""), server.check("m"), server.check("m:stable")) == (SERVING, SERVING, NOT_SERVING)
    make_versions(base, 2)
    manager.reload_config(config_for(base, "model_version_policy { all {} }", {"stable": 2}))
    manager.poll_now()
    assert server.check("m:stable") == SERVING
    with pytest.raises(grpc.RpcError) as caught:
        server.check("m:nope")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    manager.stop()


def test_watchers_are_told_each_change_and_drain_turns_everything_off(tmp_path, served):
    base = tmp_path / "m"
    make_versions(base, 1)
    manager = manager_for(RecordingLoader())
    manager.start(config_for(base, ONLY_1, {}))
    manager.reload_config(config_for(base, ONLY_1, {"stable": 1}))
    server = served(manager)
    seen: queue.Queue[int] = queue.Queue()
    stream = server.stub.Watch(health_pb2.HealthCheckRequest(service="m:stable"))

    def watch() -> None:
        try:
            for response in stream:
                seen.put(response.status)
        except grpc.RpcError:
            pass

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert seen.get(timeout=10) == SERVING
    manager.reload_config(config_for(base, ONLY_1, {}))  # the label leaves the config
    assert seen.get(timeout=10) == NOT_SERVING
    manager.reload_config(config_for(base, ONLY_1, {"stable": 1}))
    assert seen.get(timeout=10) == SERVING
    server.health.drain()
    assert seen.get(timeout=10) == NOT_SERVING
    manager.reload_config(config_for(base, ONLY_1, {"stable": 1}))
    assert (server.check(""), server.check("m:stable")) == (NOT_SERVING, NOT_SERVING)  # for good
    stream.cancel()
    watcher.join(10)
    manager.stop()


def test_watchers_hold_no_server_thread(tmp_path, served):
    """Watch is non-blocking: more watching clients than server threads still get Check answered."""
    base = tmp_path / "m"
    make_versions(base, 1)
    manager = manager_for(RecordingLoader())
    manager.start(config_for(base, ONLY_1, {}))
    server = served(manager)  # max_threads=2
    streams = [server.stub.Watch(health_pb2.HealthCheckRequest(service="m")) for _ in range(4)]
    with futures.ThreadPoolExecutor(4) as pool:
        firsts = list(pool.map(lambda s: next(s).status, streams))
    assert firsts == [SERVING] * 4
    assert server.check("m") == SERVING
    for stream in streams:
        stream.cancel()
    manager.stop()


def test_a_change_racing_the_drain_never_turns_a_name_back_on():
    """The model manager keeps refreshing while the server drains: a version that finishes loading then
    must not report SERVING again (after the drain, nothing could turn it off)."""
    import sys

    from serving.local_server.health import NOT_SERVING, SERVING, _Servicer

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: every window gets visited
    try:
        for _ in range(300):
            servicer = _Servicer()
            servicer.set("mnist", SERVING)
            stop = threading.Event()

            def refresh(servicer=servicer, stop=stop):
                while not stop.is_set():
                    servicer.set("mnist", SERVING)

            refresher = threading.Thread(target=refresh)
            refresher.start()
            servicer.enter_graceful_shutdown()
            stop.set()
            refresher.join(10)
            answer = servicer.Check(health_pb2.HealthCheckRequest(service="mnist"), None)
            assert answer.status == NOT_SERVING
    finally:
        sys.setswitchinterval(switch)


def test_a_closed_watch_leaves_nothing_behind():
    """Any client may watch any name: what a watch holds (its name, 1 MB here) goes when it closes."""
    import gc
    import tracemalloc

    from serving.local_server.health import _Servicer

    class Context:
        def __init__(self) -> None:
            self.on_close = []

        def add_callback(self, callback) -> None:
            self.on_close.append(callback)

    servicer = _Servicer()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(10):
            context, told = Context(), []
            name = f"{i}-" + "x" * 1_000_000
            servicer.Watch(health_pb2.HealthCheckRequest(service=name), context, told.append)
            assert told[0].status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            for close in context.on_close:
                close()
        del name, context, close  # the test's own references to the last watch
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 1_000_000, f"{held:,} bytes still held after the watches closed"
