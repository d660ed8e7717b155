"""Settings: every variable read from the environment, defaults, validation, and `mnist-gateway`'s errors."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from gateway.settings import MAX_MODEL_SERVERS, Settings, SettingsError
from gateway.store.migrate import MigrationError, validate_keyspace


def test_defaults_from_an_empty_environment():
    s = Settings.from_env({})
    assert s.env == "development"
    assert s.port == 8080
    assert s.model_server_grpc == "localhost:8500"
    assert s.model_name == "mnist" and s.model_label == "stable"
    assert (
        s.cassandra_hosts == ("127.0.0.1",) and s.cassandra_port == 9042 and s.cassandra_keyspace == "mnist"
    )
    assert s.ops_token == "" and not s.ops_enabled


def test_every_variable_is_read():
    s = Settings.from_env(
        {
            "GATEWAY_ENV": "production",
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": "9000",
            "GATEWAY_WORKERS": "3",
            "GATEWAY_THREADS": "4",
            "GATEWAY_GRACEFUL_TIMEOUT_S": "7",
            "GATEWAY_WORKER_LIFETIME_S": "3600",
            "GATEWAY_MAX_UPLOAD_BYTES": "2048",
            "GATEWAY_MAX_IMAGE_PIXELS": "1000",
            "GATEWAY_MAX_FORM_FIELD_BYTES": "200000",
            "GATEWAY_MAX_FORM_PARTS": "4",
            "GATEWAY_SPOOL_DIR": "/tmp/spool",
            "GATEWAY_WAL_MAX_BYTES": "1048576",
            "GATEWAY_WAL_SYNC": "Write",
            "GATEWAY_PAGE_SIZE": "5",
            "GATEWAY_RETRY_AFTER_S": "9",
            "GATEWAY_ROLLOUT_REFRESH_S": "0.5",
            "GATEWAY_SHADOW_QUEUE": "3",
            "GATEWAY_MODEL_MAX_BATCH": "8",
            "GATEWAY_MODEL_CONCURRENCY": "3",
            "MODEL_SERVER_GRPC": "tfs:8500",
            "MODEL_NAME": "digits",
            "MODEL_LABEL": "canary",
            "MODEL_TIMEOUT_S": "1.5",
            "MODEL_RETRIES": "0",
            "CASSANDRA_HOSTS": " a, b ,c ",
            "CASSANDRA_PORT": "9043",
            "CASSANDRA_KEYSPACE": "other",
            "CASSANDRA_LOCAL_DC": "dc2",
            "CASSANDRA_TTL_DAYS": "0",
            "CASSANDRA_WRITE_LINGER_MS": "0",
            "CASSANDRA_USERNAME": " mnist ",
            "CASSANDRA_PASSWORD": " p4ss word ",
            "OPS_TOKEN": "0123456789abcdef0123",
            "LOG_LEVEL": "debug",
        }
    )
    assert (s.env, s.host, s.port, s.workers, s.threads, s.graceful_timeout_s) == (
        "production",
        "127.0.0.1",
        9000,
        3,
        4,
        7,
    )
    assert s.worker_lifetime_s == 3600
    assert (s.max_upload_bytes, s.max_image_pixels, s.spool_dir, s.page_size, s.retry_after_s) == (
        2048,
        1000,
        "/tmp/spool",
        5,
        9,
    )
    assert (s.model_server_grpc, s.model_name, s.model_label, s.model_timeout_s, s.model_retries) == (
        "tfs:8500",
        "digits",
        "canary",
        1.5,
        0,
    )
    assert (s.max_form_field_bytes, s.max_form_parts) == (200_000, 4)
    assert (s.cassandra_hosts, s.cassandra_port, s.cassandra_keyspace) == (("a", "b", "c"), 9043, "other")
    assert (s.cassandra_local_dc, s.cassandra_ttl_days, s.cassandra_write_linger_ms) == ("dc2", 0, 0)
    assert (s.cassandra_username, s.cassandra_password) == ("mnist", " p4ss word ")  # a password is verbatim
    assert "p4ss" not in repr(s)
    assert (s.wal_max_bytes, s.wal_sync) == (1048576, "write")
    assert (s.rollout_refresh_s, s.shadow_queue) == (0.5, 3)
    assert (s.model_max_batch, s.model_concurrency) == (8, 3)
    assert s.ops_enabled and s.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"GATEWAY_PORT": "http"}, "GATEWAY_PORT"),
        ({"GATEWAY_PORT": "70000"}, "GATEWAY_PORT"),
        ({"MODEL_SERVER_GRPC": "no-port"}, "MODEL_SERVER_GRPC"),
        ({"MODEL_TIMEOUT_S": "soon"}, "MODEL_TIMEOUT_S"),
        ({"MODEL_LABEL": "a b"}, "MODEL_LABEL"),
        ({"GATEWAY_ENV": "staging"}, "GATEWAY_ENV"),
        ({"CASSANDRA_KEYSPACE": "x;drop"}, "CASSANDRA_KEYSPACE"),
        ({"CASSANDRA_KEYSPACE": "Mnist"}, "CASSANDRA_KEYSPACE"),  # mnist-migrate makes lower-case names only
        ({"CASSANDRA_KEYSPACE": "k" * 49}, "CASSANDRA_KEYSPACE"),
        ({"CASSANDRA_HOSTS": " , "}, "CASSANDRA_HOSTS"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"CASSANDRA_TTL_DAYS": "-1"}, "CASSANDRA_TTL_DAYS"),
        ({"CASSANDRA_WRITE_LINGER_MS": "5000"}, "CASSANDRA_WRITE_LINGER_MS"),
        ({"GATEWAY_WORKER_LIFETIME_S": "59"}, "GATEWAY_WORKER_LIFETIME_S"),
        ({"GATEWAY_WORKER_LIFETIME_S": "-1"}, "GATEWAY_WORKER_LIFETIME_S"),
        ({"GATEWAY_WAL_MAX_BYTES": "1048575"}, "GATEWAY_WAL_MAX_BYTES"),
        ({"GATEWAY_WAL_MAX_BYTES": "1e9"}, "GATEWAY_WAL_MAX_BYTES"),
        ({"GATEWAY_WAL_SYNC": "never"}, "GATEWAY_WAL_SYNC"),
        # Werkzeug bounds its multipart buffer by the form field limit: 64 KiB refused uploads by their bytes.
        ({"GATEWAY_MAX_FORM_FIELD_BYTES": "65536"}, "GATEWAY_MAX_FORM_FIELD_BYTES"),
        ({"GATEWAY_MAX_FORM_PARTS": "0"}, "GATEWAY_MAX_FORM_PARTS"),
        ({"GATEWAY_ROLLOUT_REFRESH_S": "0.09"}, "GATEWAY_ROLLOUT_REFRESH_S"),
        ({"GATEWAY_ROLLOUT_REFRESH_S": "301"}, "GATEWAY_ROLLOUT_REFRESH_S"),
        ({"GATEWAY_ROLLOUT_REFRESH_S": "soon"}, "GATEWAY_ROLLOUT_REFRESH_S"),
        ({"GATEWAY_SHADOW_QUEUE": "0"}, "GATEWAY_SHADOW_QUEUE"),
        ({"GATEWAY_SHADOW_QUEUE": "10001"}, "GATEWAY_SHADOW_QUEUE"),
        ({"GATEWAY_MODEL_MAX_BATCH": "0"}, "GATEWAY_MODEL_MAX_BATCH"),
        ({"GATEWAY_MODEL_MAX_BATCH": "1001"}, "GATEWAY_MODEL_MAX_BATCH"),
        ({"GATEWAY_MODEL_CONCURRENCY": "0"}, "GATEWAY_MODEL_CONCURRENCY"),
        ({"GATEWAY_MODEL_CONCURRENCY": "65"}, "GATEWAY_MODEL_CONCURRENCY"),
        ({"GATEWAY_MAX_IMAGE_PIXELS": "89478486"}, "GATEWAY_MAX_IMAGE_PIXELS"),
        ({"GATEWAY_ENV": "production"}, "OPS_TOKEN"),
        ({"GATEWAY_ENV": "production", "OPS_TOKEN": "changeme"}, "OPS_TOKEN"),
        # A header carries Latin-1 at best: a token outside printable ASCII could never be sent to match.
        ({"OPS_TOKEN": "pässwörd-0123456789"}, "OPS_TOKEN"),
        ({"OPS_TOKEN": "bell\x07-0123456789"}, "OPS_TOKEN"),
        ({"CASSANDRA_USERNAME": "mnist"}, "CASSANDRA_PASSWORD"),
        ({"CASSANDRA_PASSWORD": "secret"}, "CASSANDRA_USERNAME"),
        ({"GATEWAY_ENV": "production", "OPS_TOKEN": "0123456789abcdef0123"}, "CASSANDRA_USERNAME"),
    ],
)
def test_bad_values_are_refused_with_the_variable_named(env, names):
    with pytest.raises(SettingsError, match=names):
        Settings.from_env(env)


def test_an_ops_token_of_any_printable_ascii_is_kept_as_given():
    token = "Tr0ub4dor&3!~x+/=\"' two words"
    assert Settings.from_env({"OPS_TOKEN": token}).ops_token == token


def _servers(count: int) -> str:
    return ",".join(f"10.0.{i // 250}.{i % 250 + 1}:8500" for i in range(count))


@pytest.mark.parametrize(
    ("value", "target"),
    [
        ("localhost:8500", "localhost:8500"),
        ("tfserving:8500", "tfserving:8500"),
        ("[::1]:8500", "[::1]:8500"),
        (
            "dns:///tfserving-pods.mnist.svc.cluster.local:8500",
            "dns:///tfserving-pods.mnist.svc.cluster.local:8500",
        ),
        ("127.0.0.1:8500, 127.0.0.2:8500", "ipv4:127.0.0.1:8500,127.0.0.2:8500"),
        ("127.0.0.1:8500,127.0.0.1:8501", "ipv4:127.0.0.1:8500,127.0.0.1:8501"),
        ("[::1]:8500,[fe80::1]:8500", "ipv6:[::1]:8500,[fe80::1]:8500"),
        (_servers(MAX_MODEL_SERVERS), "ipv4:" + _servers(MAX_MODEL_SERVERS)),  # the most addresses
    ],
)
def test_model_servers_become_one_grpc_target(value, target):
    s = Settings.from_env({"MODEL_SERVER_GRPC": value})
    assert s.model_server_target == target


@pytest.mark.parametrize(
    "value",
    [
        "no-port",
        "a:8500,",  # an empty entry
        "tfserving:8500,tfserving-2:8500",  # names in a list: one dns:/// name resolves to every replica
        "127.0.0.1:8500,[::1]:8500",  # gRPC's ipv4:/ipv6: targets do not mix
        "127.0.0.1:8500,127.0.0.1:8500",  # twice the same replica
        "127.0.0.1:8500,127.0.0.2:0",
        "dns:///tfserving",  # no port
        "dns:///a:8500,b:8500",
        "dns://8.8.8.8/tfserving:8500",  # an authority: the cluster's resolver, not one named here
        _servers(MAX_MODEL_SERVERS + 1),  # one address too many
    ],
)
def test_malformed_model_servers_are_refused(value):
    with pytest.raises(SettingsError, match="MODEL_SERVER_GRPC"):
        Settings.from_env({"MODEL_SERVER_GRPC": value})


def test_the_keyspace_rule_is_the_migrations():
    assert Settings.from_env({"CASSANDRA_KEYSPACE": "k" * 48}).cassandra_keyspace == "k" * 48
    for name in ("mnist", "k" * 48, "a_1"):
        assert validate_keyspace(name) == name
    for name in ("Mnist", "k" * 49, "1a", "_a"):
        with pytest.raises(MigrationError):
            validate_keyspace(name)
        with pytest.raises(SettingsError, match="CASSANDRA_KEYSPACE"):
            Settings(cassandra_keyspace=name)


def test_settings_are_frozen():
    s = Settings()
    with pytest.raises(AttributeError):
        s.port = 1  # type: ignore[misc]
    assert s.replace(port=1234).port == 1234


def test_cli_help_and_bad_settings_exit_cleanly():
    ok = subprocess.run([sys.executable, "-m", "gateway.server", "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "GATEWAY_PORT" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "gateway.server"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "GATEWAY_ENV": "production"},
        timeout=60,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("mnist-gateway: error: OPS_TOKEN")
    assert "Traceback" not in bad.stderr


# Each setting, a value other than its default, and where that value must arrive. A new setting fails
# test_every_setting_is_wired until it is listed here; each value differs from the default, so a setting
# that reaches nothing (or reaches it with the default) fails.
WIRING = {
    "host": "127.0.0.2",
    "port": 9001,
    "workers": 3,
    "threads": 5,
    "graceful_timeout_s": 7,
    "worker_lifetime_s": 3600,
    "rate_limit": "5/second",
    "log_level": "DEBUG",
    "max_upload_bytes": 4096,
    "max_form_field_bytes": 200_000,  # and their 413s: test_gateway_limits.py
    "max_form_parts": 4,
    "retry_after_s": 11,  # reaches the 503s: test_gateway_http.py
    "max_image_pixels": 1000,  # reaches the decoder: test_gateway_http.py
    "page_size": 3,  # reaches GET /v1/predictions: test_gateway_http.py
    "model_label": "canary",  # the default label asked: test_gateway_http.py
    "ops_token": "0123456789abcdef0123",  # guards /ops: test_gateway_http.py
    "env": "production",  # refuses weak tokens: test_bad_values_are_refused_with_the_variable_named
    "model_server_grpc": "10.0.0.1:8600,10.0.0.2:8600",  # reaches the channel as one ipv4: target
    "model_timeout_s": 1.5,
    "model_name": "digits",
    "model_retries": 4,
    "cassandra_hosts": ("a", "b"),
    "cassandra_port": 9043,
    "cassandra_keyspace": "other",
    "spool_dir": "/var/tmp/elsewhere",
    "cassandra_ttl_days": 3,
    "cassandra_local_dc": "dc2",
    "cassandra_replication": "dc2:3",  # and the consistency it derives: test_the_consistency_*
    "cassandra_consistency": "QUORUM",
    "cassandra_write_linger_ms": 0,
    "cassandra_username": "gateway",
    "cassandra_password": "a-password-0123456789",
    "wal_max_bytes": 2 * 1024 * 1024,
    "wal_sync": "write",
    "rollout_refresh_s": 0.7,  # and its cache's effect: test_rollout.py, test_gateway_rollout.py
    "shadow_queue": 5,  # and its drops: test_gateway_rollout.py
    "model_max_batch": 9,  # and the calls it shapes: test_batching.py
    "model_concurrency": 3,
}


class ModelDouble:
    def predict(self, images, *, label=None, version=None):
        raise AssertionError("not called")


def test_every_setting_is_wired(monkeypatch):
    import granian.server

    import gateway.model_client
    import gateway.ratelimit
    import gateway.store
    from gateway.metrics import GatewayMetrics
    from gateway.server import build_server
    from gateway.services import Services
    from gateway.store.cluster import Credentials

    assert set(WIRING) == set(Settings.__dataclass_fields__)
    defaults = Settings()
    assert all(getattr(defaults, name) != value for name, value in WIRING.items())
    s = Settings(**WIRING)

    made: dict[str, tuple] = {}

    def recorder(kind: str):
        return lambda *args, **kwargs: made.setdefault(kind, (args, kwargs))

    monkeypatch.setattr(granian.server, "Server", recorder("server"))
    build_server(s)
    server = made["server"][1]
    assert (server["address"], server["port"]) == ("127.0.0.2", 9001)
    assert (server["workers"], server["blocking_threads"], server["workers_kill_timeout"]) == (3, 5, 7)
    assert server["workers_lifetime"] == 3600
    assert server["log_dictconfig"]["root"]["level"] == "DEBUG"

    from gateway.app import create_app

    monkeypatch.setattr(gateway.ratelimit, "init_app", recorder("rate limit"))
    config = create_app(s).config
    assert (config["UPLOAD_LIMIT_BYTES"], config["MAX_FORM_MEMORY_SIZE"], config["MAX_FORM_PARTS"]) == (
        4096,
        200_000,
        4,
    )
    assert made["rate limit"][1] == {"rate_limit": "5/second"}

    monkeypatch.setattr(gateway.model_client, "ModelClient", recorder("model"))
    monkeypatch.setattr(gateway.store, "PredictionStore", recorder("store"))
    services = Services(s, GatewayMetrics())
    assert services.model_client is made["model"] and services.store is made["store"]
    assert made["model"] == (
        ("ipv4:10.0.0.1:8600,10.0.0.2:8600",),
        {"timeout_s": 1.5, "model_name": "digits", "retries": 4, "health_label": "canary"},
    )
    assert made["store"] == (
        (),
        {
            "hosts": ["a", "b"],
            "port": 9043,
            "keyspace": "other",
            "spool_dir": "/var/tmp/elsewhere",
            "ttl_seconds": 3 * 86400,
            "local_dc": "dc2",
            "credentials": Credentials("gateway", "a-password-0123456789"),
            "consistency": "QUORUM",
            "write_linger": 0.0,
            "max_log_bytes": 2 * 1024 * 1024,
            "sync": False,
        },
    )
    assert services.rollouts.refresh_s == 0.7
    assert services.shadow.maxsize == 5
    predictor = Services(s, GatewayMetrics(), model_client=ModelDouble()).predictor
    assert (predictor.max_batch, predictor.lanes) == (9, 3)


def test_the_log_settings_agree_across_settings_env_example_compose_configmap_and_docs(repo_root):
    """The write-ahead log's settings: one default, named in every place an operator looks."""
    import yaml

    import gateway.settings as settings_module

    defaults = {
        "GATEWAY_WAL_MAX_BYTES": str(Settings().wal_max_bytes),
        "GATEWAY_WAL_SYNC": Settings().wal_sync,
        "CASSANDRA_WRITE_LINGER_MS": str(Settings().cassandra_write_linger_ms),
        "GATEWAY_ROLLOUT_REFRESH_S": f"{Settings().rollout_refresh_s:g}",
        "GATEWAY_SHADOW_QUEUE": str(Settings().shadow_queue),
        "GATEWAY_MODEL_MAX_BATCH": str(Settings().model_max_batch),
        "GATEWAY_MODEL_CONCURRENCY": str(Settings().model_concurrency),
    }
    env_example = dict(
        line.split("=", 1)
        for line in (repo_root / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    compose = (repo_root / "docker-compose.yml").read_text()
    config_map = yaml.safe_load((repo_root / "deploy/k8s/base/settings.yaml").read_text())["data"]
    docs = (repo_root / "docs/gateway.md").read_text()
    for name, default in defaults.items():
        assert f"`{name}` (`{default}`)" in settings_module.__doc__, name
        assert env_example[name] == default, name
        assert f"{name}: ${{{name}:-{default}}}" in compose, name
        assert f"| `{name}` | `{default}` |" in docs, name
        Settings.from_env({name: config_map[name]})  # present in the ConfigMap and accepted


def test_the_store_is_closed_within_the_graceful_timeout(monkeypatch):
    import gateway.store
    from gateway.metrics import GatewayMetrics
    from gateway.services import Services

    closed = []

    class Store:
        def __init__(self, **_):
            pass

        def close(self, timeout: float = 10.0) -> None:
            closed.append(timeout)

    monkeypatch.setattr(gateway.store, "PredictionStore", Store)
    for graceful, expected in ((30, 29), (2, 1), (1, 1)):  # the server kills the worker after `graceful`
        services = Services(Settings(graceful_timeout_s=graceful), GatewayMetrics())
        assert isinstance(services.store, Store)
        services.close()
        assert closed.pop() == expected


def test_the_rollout_settings_limits_are_accepted_at_their_edges():
    for refresh in ("0.1", "300"):
        assert Settings.from_env({"GATEWAY_ROLLOUT_REFRESH_S": refresh}).rollout_refresh_s == float(refresh)
    for size in ("1", "10000"):
        assert Settings.from_env({"GATEWAY_SHADOW_QUEUE": size}).shadow_queue == int(size)
    for size in ("1", "1000"):
        assert Settings.from_env({"GATEWAY_MODEL_MAX_BATCH": size}).model_max_batch == int(size)
    for calls in ("1", "64"):
        assert Settings.from_env({"GATEWAY_MODEL_CONCURRENCY": calls}).model_concurrency == int(calls)


@pytest.mark.parametrize(
    ("replication", "consistency", "expected"),
    [
        ("1", "", "ONE"),
        ("2", "", "ONE"),  # a quorum of 2 is both replicas: one node down would stop writes
        ("3", "", "LOCAL_QUORUM"),
        ("dc1:3,dc2:2", "", "ONE"),  # the smallest data centre decides
        ("dc1:3,dc2:3", "", "LOCAL_QUORUM"),
        ("3", "quorum", "QUORUM"),
        ("1", "LOCAL_QUORUM", "LOCAL_QUORUM"),
        ("2", "TWO", "TWO"),  # just enough replicas
        ("3", "THREE", "THREE"),
    ],
)
def test_the_consistency_follows_the_replication_unless_set(replication, consistency, expected):
    env = {"CASSANDRA_REPLICATION": replication, "CASSANDRA_CONSISTENCY": consistency}
    assert Settings.from_env(env).cassandra_consistency_level == expected


@pytest.mark.parametrize(
    ("replication", "consistency"),
    [
        ("1", "TWO"),  # one replica too few
        ("2", "THREE"),
        ("dc1:3,dc2:2", "THREE"),
        ("3", "SERIAL"),  # lightweight transactions only: derived, never set
        ("3", "ANY"),  # may acknowledge a write no replica holds
        ("3", "MOST"),
        ("0", ""),
        ("dc1", ""),
    ],
)
def test_a_consistency_the_replication_cannot_give_is_refused(replication, consistency):
    env = {"CASSANDRA_REPLICATION": replication, "CASSANDRA_CONSISTENCY": consistency}
    with pytest.raises(SettingsError, match="CASSANDRA_REPLICATION/CASSANDRA_CONSISTENCY"):
        Settings.from_env(env)


def test_the_consistency_settings_are_named_everywhere_an_operator_looks(repo_root):
    import yaml

    import gateway.settings as settings_module

    env_example = (repo_root / ".env.example").read_text()
    compose = (repo_root / "docker-compose.yml").read_text()
    config_map = yaml.safe_load((repo_root / "deploy/k8s/base/settings.yaml").read_text())["data"]
    docs = (repo_root / "docs/gateway.md").read_text()
    for name in ("CASSANDRA_REPLICATION", "CASSANDRA_CONSISTENCY"):
        assert f"`{name}`" in settings_module.__doc__, name
        assert f"\n{name}=" in env_example, name
        assert f"{name}: ${{{name}:-" in compose, name
        assert f"| `{name}` |" in docs, name
        Settings.from_env({name: config_map[name]})


def test_shared_calls_fit_the_model_servers_batches(repo_root):
    """A shared Predict call larger than the deployed model server's max_batch_size would be refused."""
    parameters = (repo_root / "serving/batching_parameters.txt").read_text()
    server_max = int(re.search(r"max_batch_size \{ value: (\d+) \}", parameters).group(1))
    assert Settings().model_max_batch <= server_max


def test_the_predictor_can_be_the_first_service_used():
    """The first request a process serves may be a prediction: the predictor makes the model client it
    calls (an app embedded without the server's warm-up used to hang there for good)."""
    import threading

    from gateway.metrics import GatewayMetrics
    from gateway.services import Services

    services = Services(Settings(model_server_grpc="127.0.0.1:9"), GatewayMetrics())
    made = []
    first_use = threading.Thread(target=lambda: made.append(services.predictor), daemon=True)
    first_use.start()
    first_use.join(timeout=30)
    assert made, "making the predictor hung"
    assert made[0].lanes == Settings().model_concurrency
    services.close()
