"""The `make up` runner's own machinery, with real processes and sockets: port checks, readiness polling,
supervision (prefixed output, a dying part, stopping whole process groups, Ctrl-C)."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from deploy.local import stack
from deploy.local.readiness import (
    NotReady,
    PortBusy,
    PortClaim,
    WaitTimeout,
    ensure_ports_free,
    free_port,
    http_ok,
    model_available,
    port_free,
    tcp_open,
    wait_for,
)
from deploy.local.supervisor import PartDied, Supervisor

PY = sys.executable


def http_server(port: int, directory: Path) -> list[str]:
    return [PY, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(directory)]


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); it is gone for every practical purpose
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


# -- ports ------------------------------------------------------------------------------------------------
def test_port_checks_see_a_listening_socket_and_name_every_problem():
    port = free_port()
    assert port_free("127.0.0.1", port)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        assert not port_free("127.0.0.1", port)
        assert tcp_open("127.0.0.1", port)
        other = free_port()
        with pytest.raises(PortBusy) as err:
            ensure_ports_free(
                [
                    PortClaim("gateway", "127.0.0.1", port),
                    PortClaim("model server REST", "127.0.0.1", other),
                    PortClaim("Cassandra", "127.0.0.1", other),
                ]
            )
    message = str(err.value)
    assert f"gateway port {port} on 127.0.0.1 is already in use" in message
    assert f"Cassandra and model server REST both use port {other}" in message
    assert not tcp_open("127.0.0.1", port)
    ensure_ports_free([PortClaim("gateway", "127.0.0.1", port)])


# -- readiness polling ------------------------------------------------------------------------------------
def test_wait_for_polls_until_a_real_server_answers(tmp_path):
    port = free_port()
    (tmp_path / "readyz").write_text("ok")
    check = http_ok(f"http://127.0.0.1:{port}/readyz")
    with pytest.raises(NotReady, match="Connection refused"):
        check()
    tries: list[str] = []
    proc = None

    def check_and_start_on_the_third_try() -> bool:
        nonlocal proc
        try:
            return check()
        except NotReady as exc:
            tries.append(str(exc))
            if len(tries) == 3:
                proc = subprocess.Popen(http_server(port, tmp_path), stderr=subprocess.DEVNULL)
            raise

    try:
        wait_for(check_and_start_on_the_third_try, what="the test server", timeout_s=60, interval_s=0.05)
        assert len(tries) >= 3 and all("Connection refused" in reason for reason in tries)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()


def test_wait_for_times_out_with_the_last_reason(tmp_path):
    port = free_port()
    with subprocess.Popen(http_server(port, tmp_path), stderr=subprocess.DEVNULL) as proc:
        try:
            wait_for(lambda: tcp_open("127.0.0.1", port), what="server", timeout_s=30, interval_s=0.05)
            with pytest.raises(WaitTimeout) as err:
                wait_for(http_ok(f"http://127.0.0.1:{port}/readyz"), what="the gateway", timeout_s=0.5)
            assert str(err.value).startswith("the gateway not ready after 0 s:")
            assert "answered 404" in str(err.value)
        finally:
            proc.terminate()


def test_model_available_reads_tf_serving_status_states(tmp_path):
    """The REST status document as TF Serving answers it, served by a real HTTP server."""
    status_file = tmp_path / "v1" / "models" / "mnist"
    status_file.parent.mkdir(parents=True)

    def write(state: str) -> None:
        doc = {"model_version_status": [{"version": "1", "state": state, "status": {"error_code": "OK"}}]}
        status_file.write_text(json.dumps(doc))

    port = free_port()
    write("LOADING")
    with subprocess.Popen(http_server(port, tmp_path), stderr=subprocess.DEVNULL) as proc:
        try:
            check = model_available(f"http://127.0.0.1:{port}", "mnist")
            wait_for(lambda: tcp_open("127.0.0.1", port), what="server", timeout_s=30, interval_s=0.05)
            with pytest.raises(NotReady, match=r"not AVAILABLE yet \(1: LOADING\)"):
                check()
            write("AVAILABLE")
            assert check() is True
            with pytest.raises(NotReady, match="answered 404"):
                model_available(f"http://127.0.0.1:{port}", "other")()
        finally:
            proc.terminate()


def test_wait_for_stops_at_once_when_the_process_dies(tmp_path):
    sup = Supervisor(io.StringIO(), log_dir=tmp_path)
    part = sup.start("doomed", [PY, "-c", "import sys; print('cannot start: bad config'); sys.exit(3)"])
    # A timeout far beyond the test's own: only the dead process can end this wait.
    with pytest.raises(PartDied) as err:
        wait_for(lambda: False, what="doomed", timeout_s=24 * 3600, alive=part.ensure_alive)
    assert "doomed exited with code 3" in str(err.value)
    assert "cannot start: bad config" in str(err.value)


# -- supervision ------------------------------------------------------------------------------------------
def test_output_is_prefixed_and_logged_per_part(tmp_path):
    out = io.StringIO()
    with Supervisor(out, log_dir=tmp_path, color=False) as sup:
        part = sup.start("serve", [PY, "-c", "print('hello'); print('progress 10%\\rprogress 100%')"])
        part.process.wait()
        part.pump.join(5)
    lines = out.getvalue().splitlines()
    assert "serve     | hello" in lines
    assert "serve     | progress 100%" in lines
    assert (tmp_path / "serve.log").read_text().startswith("hello\n")


def test_stop_all_ends_whole_process_groups_and_frees_the_ports(tmp_path):
    """A part whose child ignores SIGTERM (like a JVM hanging on shutdown) is killed after the grace time."""
    port_a, port_b = free_port(), free_port()
    stubborn = textwrap.dedent(
        f"""
        import signal, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('child', flush=True); "
            "time.sleep(600)"])
        print("grandchild", child.pid, flush=True)
        subprocess.run({http_server(port_b, tmp_path)!r})
        """
    )
    out = io.StringIO()
    sup = Supervisor(out, log_dir=tmp_path, color=False)
    first = sup.start("web", http_server(port_a, tmp_path))
    second = sup.start("stubborn", [PY, "-c", stubborn])
    wait_for(
        lambda: tcp_open("127.0.0.1", port_a) and tcp_open("127.0.0.1", port_b), what="both", timeout_s=30
    )
    # "child" is printed once it ignores SIGTERM: before that, a TERM would end it and prove nothing.
    wait_for(lambda: "| child\n" in out.getvalue(), what="the grandchild ignoring SIGTERM", timeout_s=30)
    grandchild = int(out.getvalue().split("grandchild ")[1].split()[0])
    assert pid_exists(grandchild)

    sup.stop_all(grace_s=1.0)
    for pid in (first.pid, second.pid, grandchild):
        assert not pid_exists(pid)
    assert port_free("127.0.0.1", port_a) and port_free("127.0.0.1", port_b)
    text = out.getvalue()
    assert "stubborn did not stop within 1 s: killing it" in text
    assert text.index("stopped stubborn") < text.index("stopped web")  # reverse start order


def test_watch_reports_a_part_that_dies(tmp_path):
    port = free_port()
    out = io.StringIO()
    with Supervisor(out, log_dir=tmp_path, color=False) as sup:
        web = sup.start("web", http_server(port, tmp_path))
        sup.start(
            "flaky", [PY, "-c", "import time; time.sleep(0.5); print('out of memory'); raise SystemExit(137)"]
        )
        with pytest.raises(PartDied) as err:
            sup.watch(interval_s=0.05)
        assert err.value.part.name == "flaky"
        assert "flaky exited with code 137" in str(err.value)
        assert "out of memory" in str(err.value)
        assert str(tmp_path / "flaky.log") in str(err.value)
        assert web.running()
    assert not pid_exists(web.pid)


RUNNER = textwrap.dedent(
    """
    import sys
    from deploy.local.supervisor import Supervisor, take_ctrl_c
    take_ctrl_c()  # as the real runner does (deploy/local/stack.py)
    port = int(sys.argv[1])
    sup = Supervisor(log_dir=None, color=False)
    try:
        sup.start("web", [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"])
        sup.say("watching")
        sup.watch()
    except KeyboardInterrupt:
        sup.say("interrupted")
    finally:
        sup.stop_all(grace_s=10)
    sup.say("done")
    """
)


def test_ctrl_c_reaches_the_runner_which_stops_its_parts(repo_root):
    port = free_port()
    proc = subprocess.Popen(
        [PY, "-c", RUNNER, str(port)],
        cwd=repo_root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # like a terminal: the runner leads its own foreground group
    )
    try:
        wait_for(lambda: tcp_open("127.0.0.1", port), what="web", timeout_s=30, alive=lambda: proc.poll())
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert "stack     | interrupted" in output
    assert "stack     | stopped web" in output
    assert output.rstrip().endswith("stack     | done")
    assert port_free("127.0.0.1", port)


# -- configuration and the runner's refusal paths ---------------------------------------------------------
def test_config_reads_the_design_settings_and_flags_win(tmp_path):
    env = {
        "GATEWAY_PORT": "18080",
        "MODEL_SERVER_GRPC": "127.0.0.1:18500",
        "MODEL_SERVER_REST": "http://127.0.0.1:18501",
        "CASSANDRA_PORT": "19042",
        "STACK_STATE_DIR": str(tmp_path / "state"),
        "MODEL_NAME": "mnist",
    }
    config = stack.config_from(stack.build_parser().parse_args([]), env)
    assert (config.gateway_port, config.grpc_port, config.rest_port, config.cassandra_port) == (
        18080,
        18500,
        18501,
        19042,
    )
    assert config.state_dir == (tmp_path / "state").resolve()
    assert config.model_base_path == config.state_dir / "models"
    config = stack.config_from(stack.build_parser().parse_args(["--gateway-port", "28080"]), env)
    assert config.gateway_port == 28080
    with pytest.raises(stack.StackError, match="GATEWAY_PORT='http' is not a port number"):
        stack.config_from(stack.build_parser().parse_args([]), {"GATEWAY_PORT": "http"})
    with pytest.raises(stack.StackError, match="gateway port 70000 is not a valid port"):
        stack.config_from(stack.build_parser().parse_args(["--gateway-port", "70000"]), {})


def test_models_config_copy_points_at_the_local_models_and_is_kept(tmp_path):
    """Rendered once by `mnist-models render-config`; a later run keeps it (promotions live there)."""
    config = stack.StackConfig(state_dir=tmp_path / "state", model_base_path=tmp_path / "models")
    said: list[str] = []
    path = stack.ensure_models_config(config, said.append)
    text = path.read_text()
    assert f'base_path: "{tmp_path / "models" / "mnist"}"' in text
    assert 'key: "stable"' in text and "specific" in text
    assert said == [f"wrote {path} (base path {tmp_path / 'models' / 'mnist'})"]
    path.write_text(text.replace('key: "canary"', 'key: "canary2"'))  # as if an operator changed it
    assert stack.ensure_models_config(config, said.append) == path
    assert 'key: "canary2"' in path.read_text() and len(said) == 1


def test_a_config_serving_no_version_on_disk_is_a_clear_error(tmp_path):
    config = stack.StackConfig(state_dir=tmp_path / "state", model_base_path=tmp_path / "models")
    stack.ensure_models_config(config, lambda _: None)  # the repository's config: specific version 1
    (tmp_path / "models" / "mnist" / "3").mkdir(parents=True)
    (tmp_path / "models" / "mnist" / "3" / "saved_model.pb").write_bytes(b"x")
    with pytest.raises(stack.StackError, match=r"serves version\(s\) \[1\] but .* holds \[3\]"):
        stack.check_served_versions(config)
    (tmp_path / "models" / "mnist" / "1").mkdir()
    (tmp_path / "models" / "mnist" / "1" / "saved_model.pb").write_bytes(b"x")
    stack.check_served_versions(config)


def test_model_versions_ignores_temporary_and_incomplete_directories(tmp_path):
    for name in ("1", "3", ".tmp-4", "5"):
        (tmp_path / "mnist" / name).mkdir(parents=True)
    for name in ("1", "3", ".tmp-4"):
        (tmp_path / "mnist" / name / "saved_model.pb").write_bytes(b"x")
    assert stack.model_versions(tmp_path, "mnist") == [1, 3]
    assert stack.model_versions(tmp_path, "missing") == []


def test_busy_port_refuses_before_starting_anything(repo_root, tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        busy = listener.getsockname()[1]
        result = subprocess.run(
            [PY, "-m", "deploy.local.stack", "--gateway-port", str(busy), "--state-dir", str(tmp_path)],
            cwd=repo_root,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert result.stderr.strip() == f"make up: gateway port {busy} on 127.0.0.1 is already in use"
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "logs").exists()


def test_missing_training_data_is_a_clear_error(repo_root, tmp_path):
    ports = [str(free_port()) for _ in range(4)]
    result = subprocess.run(
        [PY, "-m", "deploy.local.stack", "--state-dir", str(tmp_path)]
        + ["--gateway-port", ports[0], "--grpc-port", ports[1], "--rest-port", ports[2]]
        + ["--cassandra-port", ports[3]],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MNIST_DATA_DIR": str(tmp_path / "nothing"), "MODEL_BASE_PATH": str(tmp_path)},
    )
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == f"make up: MNIST_DATA_DIR {tmp_path / 'nothing'} does not hold the four MNIST IDX files"
    )
    config = stack.StackConfig(state_dir=tmp_path, model_base_path=tmp_path, download=False, bin_dir=tmp_path)
    (tmp_path / "mnist-train").touch()
    with pytest.raises(stack.StackError, match="no model to serve and no MNIST files to train one"):
        stack.train_command(config)
    config.download = True
    assert stack.train_command(config)[-1] == "--download"
    config.epochs, config.max_train_samples = 2, 6000
    from training import cli, settings

    args = cli.build_parsers(settings.from_env({}))["train"].parse_args(stack.train_command(config)[1:])
    assert (args.epochs, args.max_train_samples, args.download) == (2, 6000, True)
    assert args.model_base_path == tmp_path and args.model_name == "mnist"


def test_help(repo_root):
    result = subprocess.run(
        [PY, "-m", "deploy.local.stack", "--help"], cwd=repo_root, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert "--gateway-port" in result.stdout and "STACK_STATE_DIR" in result.stdout


def test_commands_are_accepted_by_the_real_parsers(tmp_path):
    """What the runner passes to mnist-serve and mnist-cassandra parses with their own argument parsers."""
    from deploy.local import cassandra_node
    from serving.local_server.flags import parse_flags

    config = stack.StackConfig(state_dir=tmp_path, model_base_path=tmp_path / "models", grpc_port=18500)
    serve = stack.serve_command(config)
    assert Path(serve[0]).name == "mnist-serve"
    flags = parse_flags(serve[1:], environ={})
    assert (flags.port, flags.rest_api_port, flags.bind_address) == (18500, 8501, "127.0.0.1")
    assert flags.model_config_file == str(config.models_config)
    assert flags.enable_batching and flags.allow_version_labels_for_unavailable_models
    for path in (flags.batching_parameters_file, flags.monitoring_config_file):
        assert Path(path).is_file()

    cassandra = stack.cassandra_command(config)
    assert Path(cassandra[0]).name == "mnist-cassandra"
    args = cassandra_node.build_parser().parse_args(cassandra[1:])
    assert (args.port, Path(args.data_dir)) == (9042, tmp_path / "cassandra")


def test_service_environment_points_every_part_at_the_local_ones(tmp_path):
    from gateway.settings import Settings

    config = stack.StackConfig(state_dir=tmp_path, model_base_path=tmp_path / "models", gateway_port=18080)
    env = stack.service_env(config, "local-token-0123456789")
    settings = Settings.from_env(env)
    assert (settings.host, settings.port) == ("127.0.0.1", 18080)
    assert settings.model_server_grpc == "127.0.0.1:8500"
    assert settings.spool_dir == str(tmp_path / "spool")
    assert settings.ops_token == "local-token-0123456789"
    # the local node's login (its only role at first): the gateway and mnist-migrate use it
    assert (settings.cassandra_username, settings.cassandra_password) == ("cassandra", "cassandra")


def test_ops_token_is_generated_once_and_private(tmp_path):
    config = stack.StackConfig(state_dir=tmp_path, model_base_path=tmp_path)
    token = stack.ops_token(config)
    assert len(token) >= 24 and stack.ops_token(config) == token
    assert (tmp_path / "ops-token").stat().st_mode & 0o777 == 0o600
    config.ops_token = "from-the-environment"
    assert stack.ops_token(config) == "from-the-environment"
