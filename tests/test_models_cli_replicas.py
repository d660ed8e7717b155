"""`mnist-models` with several model-server replicas: the real CLI (a subprocess) against two real
`mnist-serve` processes over one model directory, each reading the config once at start (no file polling),
so every change a replica sees came through the CLI's own push. Each replica is then asked directly."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from serving.ops.config_file import ConfigFile
from serving.ops.errors import ServerError
from serving.ops.server import ModelServerClient, ModelServers, replica_addresses
from tests.fixtures.model_server import ModelServerProcess, copy_models, models_config_text


@pytest.fixture
def replicas(model_base_path: Path, tmp_path: Path):
    """Two replicas serving version 1 as `stable`; version 2 (a copy of 1) is on disk, not loaded."""
    base = copy_models(model_base_path, tmp_path / "models")
    shutil.copytree(base / "mnist" / "1", base / "mnist" / ".tmp-2")
    (base / "mnist" / ".tmp-2").rename(base / "mnist" / "2")
    config = tmp_path / "models.config"
    config.write_text(models_config_text(base))
    servers = [ModelServerProcess(base, config, tmp_path / f"mnist-serve-{i}.log") for i in range(2)]
    for server in servers:
        server.start()
    yield servers, config, base
    for server in servers:
        server.stop()


def mnist_models(*args: str, server: str, config: Path, base: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "MODEL_SERVER_GRPC": server,
        "MODEL_CONFIG_FILE": str(config),
        "MODEL_BASE_PATH": str(base),
    }
    return subprocess.run(
        [str(Path(sys.executable).parent / "mnist-models"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_a_label_change_reaches_every_replica(replicas):
    servers, config, base = replicas
    addresses = ",".join(server.grpc_address for server in servers)

    done = mnist_models("canary", "2", "--force", server=addresses, config=config, base=base)
    assert done.returncode == 0, done.stderr

    for server in servers:
        with ModelServerClient(server.grpc_address) as replica:
            assert replica.version_states("mnist")[2].state == "AVAILABLE", server.grpc_address
            assert replica.label_version("mnist", "canary") == 2, server.grpc_address
            assert replica.label_version("mnist", "stable") == 1, server.grpc_address

    status = mnist_models("status", "--json", server=addresses, config=config, base=base)
    assert status.returncode == 0, status.stderr
    assert '"canary"' in status.stdout


def test_replicas_disagreeing_on_a_version_show_it_as_not_available(replicas):
    servers, config, base = replicas
    first, second = servers
    # Version 2 loaded on the first replica only: to the fleet it is not AVAILABLE yet.
    with_two = models_config_text(base, versions=(1, 2))
    one_only = config.with_name("first.config")
    one_only.write_text(with_two)
    with ModelServerClient(first.grpc_address) as replica:
        replica.reload(ConfigFile(one_only).read())
        replica.wait_available("mnist", 2, timeout_s=60)

    with ModelServers(f"{first.grpc_address},{second.grpc_address}") as fleet:
        assert fleet.version_states("mnist")[2].state == "UNKNOWN"
        assert fleet.version_states("mnist")[1].state == "AVAILABLE"
        assert fleet.label_version("mnist", "stable") == 1


def test_a_dns_name_stands_for_every_address_it_resolves_to():
    assert "127.0.0.1:8500" in replica_addresses("dns:///localhost:8500")
    assert replica_addresses("127.0.0.1:1,127.0.0.1:2") == ["127.0.0.1:1", "127.0.0.1:2"]
    assert replica_addresses("tfserving:8500") == ["tfserving:8500"]  # one name: gRPC resolves it
    with pytest.raises(ServerError, match="cannot resolve"):
        replica_addresses("dns:///no-such-host.invalid:8500")
