"""Replicated model servers behind one gateway, on real processes: two `mnist-serve` replicas, the real
`mnist-gateway` over HTTP with `MODEL_SERVER_GRPC` listing both, steady load from client threads.

The gateway balances with gRPC's own `round_robin` over the replicas its health checks report SERVING; each
claim is proved with the replicas' own request counters (their Prometheus page), waiting on conditions.
"""

from __future__ import annotations

import shutil
import threading
from collections import Counter
from pathlib import Path

import pytest
import requests

from tests.fixtures.model_server import ModelServerProcess, copy_models, models_config_text
from tests.test_gateway_e2e import as_upload, metric, mnist_test_set
from tests.waiting import eventually

__all__ = ["mnist_test_set"]  # a fixture, imported for pytest


def predict_count(server: ModelServerProcess) -> float:
    """Predict calls this replica answered OK (its own counter; 0 while it is down or just restarted)."""
    page = requests.get(f"{server.rest_url}/monitoring/prometheus/metrics", timeout=5).text
    return metric(
        page, ":tensorflow:serving:request_count_total", model_name="mnist", API="Predict", status="OK"
    )


@pytest.fixture
def replicas(model_base_path: Path, tmp_path: Path):
    """Two mnist-serve processes over one copy of the models (`stable` -> 1), as two pods share a volume."""
    base = copy_models(model_base_path, tmp_path / "models")
    config = tmp_path / "models.config"
    config.write_text(models_config_text(base))
    servers = [ModelServerProcess(base, config, tmp_path / f"mnist-serve-{i}.log") for i in range(2)]
    for server in servers:
        server.start()
    yield servers
    for server in servers:
        server.stop()


class SteadyLoad:
    """Client threads posting predictions to the gateway until stopped; every answer's status is kept."""

    def __init__(self, url: str, upload: bytes, clients: int = 3) -> None:
        self.url = url
        self.upload = upload
        self.statuses: Counter[int | str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                try:
                    status: int | str = session.post(
                        f"{self.url}/v1/predict",
                        files={"image": ("digit.png", self.upload, "image/png")},
                        timeout=30,
                    ).status_code
                except requests.RequestException as exc:
                    status = type(exc).__name__
                with self._lock:
                    self.statuses[status] += 1

    def answered(self) -> int:
        with self._lock:
            return self.statuses[200]

    def __enter__(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)


def gains(server: ModelServerProcess, at_least: float, what: str) -> None:
    start = predict_count(server)
    eventually(lambda: predict_count(server) >= start + at_least, what=what, timeout_s=120)


def test_a_killed_or_stopped_replica_costs_no_request_and_gets_traffic_back(
    replicas, start_gateway, mnist_test_set
):
    first, second = replicas
    gateway = start_gateway(MODEL_SERVER_GRPC=f"{first.grpc_address},{second.grpc_address}")
    with SteadyLoad(gateway.url, as_upload(mnist_test_set[0][0])) as load:
        gains(first, 20, "the first replica to take its share")
        gains(second, 20, "the second replica to take its share")

        first.process.kill()  # SIGKILL: no goodbye, in-flight calls break
        first.process.wait(10)
        answered = load.answered()
        gains(second, 100, "the second replica to take the whole load")
        eventually(lambda: load.answered() >= answered + 100, what="answers while one replica is down")

        first.start()  # the same port; its counters start from zero
        gains(first, 20, "traffic to return to the restarted replica")
        gains(second, 20, "the second replica to keep its share")

        assert second.stop() == 0  # SIGTERM: NOT_SERVING first, then in-flight calls finish
        gains(first, 100, "the first replica to take the whole load")
    assert set(load.statuses) == {200}, load.statuses  # not one failed user request
    assert load.statuses[200] >= 300


def test_a_replica_joins_only_once_its_stable_version_is_available(
    replicas, model_base_path, tmp_path, start_gateway, mnist_test_set
):
    """Health checking, not only round robin: a replica whose `stable` version is not loaded reports
    NOT_SERVING for `mnist:stable` and gets no call (else half of them would be 404s); once the version
    lands on its disk and loads, it takes its share."""
    first = replicas[0]
    base = copy_models(model_base_path, tmp_path / "late-models")
    config = tmp_path / "late.config"
    config.write_text(models_config_text(base, versions=None, labels={"stable": 2}))  # only 1 on disk
    late = ModelServerProcess(base, config, tmp_path / "mnist-serve-late.log").start()
    try:
        gateway = start_gateway(MODEL_SERVER_GRPC=f"{first.grpc_address},{late.grpc_address}")
        with SteadyLoad(gateway.url, as_upload(mnist_test_set[0][1])) as load:
            gains(first, 100, "the ready replica to take the calls")
            assert predict_count(late) == 0

            staged = base / "mnist" / ".staging-2"
            shutil.copytree(base / "mnist" / "1", staged)
            staged.rename(base / "mnist" / "2")  # what `mnist-train` export does: one rename
            late.wait_for_status(lambda status: status.get(2, ("",))[0] == "AVAILABLE")
            gains(late, 20, "the replica to join once `stable` is available")
        assert set(load.statuses) == {200}, load.statuses
    finally:
        late.stop()
