"""`mnist-models rollout` and `scorecard` without the stack: the guards (pure, each limit just under and just
over), the plan's checks, the new settings, the gateway client's deadlines and error mapping (over a real
loopback socket), and the exit codes documented where the CLI lists them. The driver against the real
gateway: tests/test_models_cli_rollout_e2e.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from serving.ops import guards
from serving.ops.cli import EXIT_CODES, main
from serving.ops.errors import GatewayError, RolloutConflict
from serving.ops.gateway_client import GatewayClient
from serving.ops.rollout import lease_live, stored_state
from serving.ops.rollout_report import rollout_status, scorecard_table
from serving.ops.settings import Settings
from serving.ops.steps import check_steps

REPO = Path(__file__).resolve().parents[1]
LIMITS = guards.Limits(
    max_error_rate=0.02,
    max_p99_ratio=1.5,
    p99_slack_ms=25,
    min_agreement=0.9,
    min_requests=50,
    min_compared=50,
    min_labels=100,
)


def row(version, *, requests=1000, errors=0, p99=20.0, agreement=None, labels=0, correct=0, interval=None):
    return {
        "version": version,
        "requests": requests,
        "errors": errors,
        "latency_ms": {"p50": p99 / 2, "p99": p99},
        "agreement": agreement,
        "feedback": {
            "labels": labels,
            "correct": correct,
            "accuracy": correct / labels if labels else None,
            "interval": interval,
            "confidence": 0.95,
        },
    }


def card(*rows):
    return {"model": "mnist", "stable_version": 1, "canary_version": 2, "versions": list(rows)}


def check(decision, guard):
    return next(c for c in decision.checks if c.guard == guard)


# -- guards --


def test_error_rate_just_under_and_just_over_the_limit():
    # 980 answered + 20 failed = 2.0 % passes; one more failure is over
    at_limit = guards.evaluate(
        card(row(1), row(2, requests=980, errors=20)), canary=2, stable=1, limits=LIMITS
    )
    over = guards.evaluate(card(row(1), row(2, requests=979, errors=21)), canary=2, stable=1, limits=LIMITS)
    assert check(at_limit, "error_rate").status == guards.PASS
    failed = over.failed
    assert failed is not None and failed.guard == "error_rate"
    assert "0.021 > 0.020 (21 errors in 1000 requests)" in failed.summary


def test_error_rate_waits_for_enough_requests():
    few = guards.evaluate(card(row(1), row(2, requests=40, errors=9)), canary=2, stable=1, limits=LIMITS)
    assert check(few, "error_rate").status == guards.WAIT and few.failed is None
    enough = guards.evaluate(card(row(1), row(2, requests=41, errors=9)), canary=2, stable=1, limits=LIMITS)
    assert check(enough, "error_rate").status == guards.FAIL


def test_error_rate_in_an_outage_of_every_version_does_not_blame_the_canary():
    # The model server fails half of all requests, whichever version they are for.
    outage = guards.evaluate(
        card(row(1, requests=500, errors=500), row(2, requests=100, errors=100)),
        canary=2,
        stable=1,
        limits=LIMITS,
    )
    assert check(outage, "error_rate").status == guards.PASS and outage.failed is None
    assert check(outage, "error_rate").numbers["limit"] == pytest.approx(0.52)


def test_error_rate_fails_a_canary_clearly_worse_than_a_failing_stable():
    # stable fails 10 %: the canary may fail 10 % + 2 % = 12 %, not more
    stable = row(1, requests=900, errors=100)
    at = guards.evaluate(card(stable, row(2, requests=880, errors=120)), canary=2, stable=1, limits=LIMITS)
    over = guards.evaluate(card(stable, row(2, requests=879, errors=121)), canary=2, stable=1, limits=LIMITS)
    assert check(at, "error_rate").status == guards.PASS
    assert over.failed.guard == "error_rate"
    assert over.failed.summary == (
        "0.121 > 0.120 (121 errors in 1000 requests); limit: stable's 0.100 (100 errors in 1000 requests) "
        "+ 0.020"
    )


def test_error_rate_is_absolute_while_stable_has_too_few_requests():
    # 49 stable requests, all failed: too few to excuse the canary, which is judged against 2 % alone
    few = row(1, requests=0, errors=49)
    failed = guards.evaluate(
        card(few, row(2, requests=50, errors=50)), canary=2, stable=1, limits=LIMITS
    ).failed
    assert failed.guard == "error_rate"
    assert failed.summary.endswith("; limit 0.020: stable has 49 < 50 requests to compare with")
    enough = row(1, requests=0, errors=50)
    passed = guards.evaluate(card(enough, row(2, requests=50, errors=50)), canary=2, stable=1, limits=LIMITS)
    assert check(passed, "error_rate").status == guards.PASS


def test_error_rate_compares_stable_over_the_minutes_the_canary_answered():
    """An outage in the last two minutes of a ten-minute window: the canary (started two minutes ago) fails
    as much as stable in those minutes; stable's whole window, mostly healthy, would blame the canary."""

    def point(minute, requests, errors):
        return {"minute": f"2026-11-30T12:{minute:02d}:00.000Z", "requests": requests, "errors": errors}

    stable = {
        **row(1, requests=800, errors=200),
        "series": [point(m, 100, 0) for m in range(8)] + [point(8, 0, 100), point(9, 0, 100)],
    }
    canary = {
        **row(2, requests=0, errors=100),
        "series": [point(m, 0, 0) for m in range(8)] + [point(8, 0, 50), point(9, 0, 50)],
    }
    decision = guards.evaluate(card(stable, canary), canary=2, stable=1, limits=LIMITS)
    assert check(decision, "error_rate").status == guards.PASS, check(decision, "error_rate").summary
    assert "stable's 1.000 (200 errors in 200 requests)" in check(decision, "error_rate").summary
    healthy = {**stable, "series": [point(m, 100, 0) for m in range(10)]}
    decision = guards.evaluate(card(healthy, canary), canary=2, stable=1, limits=LIMITS)
    assert decision.failed.guard == "error_rate"


def test_p99_latency_against_stable_with_ratio_and_slack():
    # limit = 40 * 1.5 + 25 = 85 ms
    at = guards.evaluate(card(row(1, p99=40), row(2, p99=85)), canary=2, stable=1, limits=LIMITS)
    over = guards.evaluate(card(row(1, p99=40), row(2, p99=85.5)), canary=2, stable=1, limits=LIMITS)
    assert check(at, "p99_latency").status == guards.PASS
    assert over.failed.guard == "p99_latency"
    assert over.failed.numbers == {"canary_p99_ms": 85.5, "stable_p99_ms": 40.0, "limit_ms": 85.0}
    assert "85.5 ms > 85 ms (stable 40 ms x 1.5 + 25 ms)" in over.failed.summary
    no_stable = guards.evaluate(card(row(1, requests=49), row(2, p99=900)), canary=2, stable=1, limits=LIMITS)
    assert check(no_stable, "p99_latency").status == guards.WAIT


def test_agreement_needs_enough_pairs_with_stable():
    def with_pairs(compared, agreed, with_version=1):
        pairs = {"with_version": with_version, "compared": compared, "agreed": agreed}
        return guards.evaluate(card(row(1), row(2, agreement=pairs)), canary=2, stable=1, limits=LIMITS)

    assert check(with_pairs(100, 90), "agreement").status == guards.PASS  # 0.90, the minimum
    failed = with_pairs(100, 89).failed
    assert failed.guard == "agreement" and "0.890 < 0.900 (89 of 100 pairs with version 1)" in failed.summary
    assert check(with_pairs(49, 0), "agreement").status == guards.WAIT  # just under min_compared
    assert check(with_pairs(50, 0), "agreement").status == guards.FAIL  # just at it
    assert check(with_pairs(500, 0, with_version=7), "agreement").status == guards.WAIT  # not stable's pairs


def test_agreement_reads_the_pairs_from_either_row():
    """Pairs count on both versions' rows: the stable row's agreement with the canary serves as well."""
    pairs = {"with_version": 2, "compared": 100, "agreed": 12}
    decision = guards.evaluate(card(row(1, agreement=pairs), row(2)), canary=2, stable=1, limits=LIMITS)
    assert (
        decision.failed.guard == "agreement" and "12 of 100 pairs with version 1" in decision.failed.summary
    )
    other = {"with_version": 7, "compared": 100, "agreed": 12}
    decision = guards.evaluate(card(row(1, agreement=other), row(2)), canary=2, stable=1, limits=LIMITS)
    assert check(decision, "agreement").status == guards.WAIT


def test_feedback_accuracy_fails_only_beyond_both_intervals_with_enough_labels():
    stable = row(1, labels=400, correct=388, interval=[0.947, 0.985])

    def canary(labels, interval):
        return guards.evaluate(
            card(stable, row(2, labels=labels, correct=labels // 2, interval=interval)),
            canary=2,
            stable=1,
            limits=LIMITS,
        )

    assert check(canary(100, [0.90, 0.947]), "feedback_accuracy").status == guards.PASS  # touches stable's
    worse = canary(100, [0.90, 0.9469]).failed
    assert worse.guard == "feedback_accuracy" and "below stable" in worse.summary
    assert worse.numbers["canary"]["labels"] == 100 and worse.numbers["stable"]["interval"] == [0.947, 0.985]
    assert check(canary(99, [0.1, 0.2]), "feedback_accuracy").status == guards.WAIT  # 99 < 100 labels
    few_on_stable = guards.evaluate(
        card(
            row(1, labels=99, correct=99, interval=[0.96, 1.0]),
            row(2, labels=500, correct=50, interval=[0.07, 0.13]),
        ),
        canary=2,
        stable=1,
        limits=LIMITS,
    )
    assert check(few_on_stable, "feedback_accuracy").status == guards.WAIT


def test_a_missing_canary_is_waited_for_and_the_first_failure_is_the_reason():
    empty = guards.evaluate(card(row(1)), canary=2, stable=1, limits=LIMITS)
    assert [c.status for c in empty.checks] == [guards.WAIT] * 4
    both = guards.evaluate(
        card(row(1), row(2, errors=100, agreement={"with_version": 1, "compared": 100, "agreed": 0})),
        canary=2,
        stable=1,
        limits=LIMITS,
    )
    assert both.failed.guard == "error_rate"
    assert [c["guard"] for c in both.as_dict()["checks"]] == [
        "error_rate",
        "p99_latency",
        "agreement",
        "feedback_accuracy",
    ]


def test_the_metrics_json_gate_is_the_one_promote_uses(tmp_path):
    for version, accuracy in ((1, 0.995), (2, 0.99), (3, 0.9899), (4, 0.9925)):
        (tmp_path / str(version) / "assets.extra").mkdir(parents=True)
        (tmp_path / str(version) / "saved_model.pb").write_bytes(b"")
        (tmp_path / str(version) / "assets.extra" / "metrics.json").write_text(
            json.dumps({"test_accuracy": accuracy, "dataset": "mnist"})
        )

    def gate(version: int, replaces: int | None, force: bool = False) -> guards.Check:
        return guards.metrics_gate(tmp_path, version, replaces, min_accuracy=0.99, force=force)

    assert gate(2, None).status == guards.PASS
    failed = gate(3, None)
    assert failed.status == guards.FAIL and "0.9899 < required 0.9900" in failed.summary
    assert gate(3, None, force=True).status == guards.PASS
    # Against the stable version it would replace, as promote and canary: 0.0025 lost is over 0.002.
    dropped = gate(2, 4)
    assert dropped.status == guards.FAIL and "below 0.9925 of version 4" in dropped.summary
    assert gate(4, 1).status == guards.FAIL and gate(1, 4).status == guards.PASS


# -- the plan, the state --


def test_steps_increase_and_end_at_100():
    assert check_steps([5, 25, 50, 100]) == (5, 25, 50, 100)
    assert check_steps([100]) == (100,)
    for bad in ([], [0, 100], [5, 101], [50, 25, 100], [25, 25, 100], [5, 50]):
        with pytest.raises(ValueError):
            check_steps(bad)


def test_the_lease_is_live_only_while_running_and_in_the_future():
    state = {"status": "running", "lease_until": "2026-11-30T12:00:10.000+00:00"}
    at = 1796040010.0  # 2026-11-30T12:00:10Z
    assert lease_live(state, at - 0.001) and not lease_live(state, at)
    assert not lease_live({**state, "status": "aborted"}, at - 5)
    assert stored_state({"state": None, "effective": {}}) is None
    assert stored_state({"state": state})["status"] == "running"


def test_the_longest_lease_the_driver_writes_is_well_within_the_gateways_bound(tmp_path):
    """The gateway refuses a lease more than MAX_LEASE_S ahead of its clock: the slowest polls the command
    line allows must stay under half of it (the other half is for the operator's clock running ahead)."""
    from gateway.rollout import MAX_LEASE_S
    from serving.ops.cli import build_parser
    from serving.ops.rollout import Driver

    slowest = build_parser(Settings.from_env({})).parse_args(["rollout", "2", "--poll-seconds", "600"])
    driver = Driver(None, None, "mnist", tmp_path, LIMITS, 0.99, poll_s=slowest.poll_seconds, who="tests")
    assert driver.lease_s <= MAX_LEASE_S / 2


# -- settings and the command line --


def test_gateway_settings_are_read_once_and_checked():
    settings = Settings.from_env({"GATEWAY_URL": "http://gw:8080/", "OPS_TOKEN": " secret "})
    assert (settings.gateway_url, settings.ops_token) == ("http://gw:8080", "secret")
    assert Settings.from_env({}).gateway_url == "http://localhost:8080"
    for bad in ("gw:8080", "ftp://gw", "http://", "http://gw/?x=1"):
        with pytest.raises(ValueError, match="GATEWAY_URL"):
            Settings.from_env({"GATEWAY_URL": bad})


def run_cli(*args: str) -> tuple[int, str]:
    """The CLI in this process (argparse's usage errors exit 2 before anything is imported or reached)."""
    out, err = _Capture(), _Capture()
    try:
        code = main(list(args), out=out, err=err)
    except SystemExit as exit_:
        code = exit_.code
    return code, err.text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["rollout"], "takes VERSION, or one of"),
        (["rollout", "2", "--status"], "takes VERSION, or one of"),
        (["rollout", "--status", "--abort"], "not allowed with"),
        (["rollout", "2", "--json"], "--json goes with --status"),
        (["rollout", "2", "--steps", "5,50"], "the last step must be 100"),
        (["rollout", "2", "--steps", "50,25,100"], "steps must increase"),
        (["rollout", "2", "--step-seconds", "0"], "whole seconds from 1 to 86400"),
        (["rollout", "2", "--step-seconds", "86401"], "whole seconds from 1 to 86400"),
        (["rollout", "2", "--window", "59"], "60 to 604800"),
        (["rollout", "2", "--poll-seconds", "600.5"], "at most 600 s between polls"),
        (["rollout", "2", "--poll-seconds", "0"], "must be > 0"),
        (["scorecard", "--window", "604801"], "60 to 604800"),
        (["rollout", "2", "--max-p99-ratio", "0.9"], "ratio to stable is >= 1"),
        (["rollout", "2", "--min-agreement", "1.01"], "between 0 and 1"),
        (["--gateway", "localhost:8080", "scorecard"], "--gateway must be http(s)://"),
    ],
)
def test_bad_rollout_command_lines_exit_2(args, message, capsys):
    code, _ = run_cli(*args)
    assert code == 2
    assert message in capsys.readouterr().err


def test_parsing_a_rollout_loads_no_tensorflow():
    """The command's own process: --steps is parsed before the protos are loaded without TensorFlow's
    runtime, so parsing must not import them (TensorFlow would log to stderr and take seconds)."""
    from deploy.local.readiness import free_port

    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "mnist-models"),
            "--gateway",
            f"http://127.0.0.1:{free_port()}",
            "rollout",
            "--status",
            "--steps",
            "10,100",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 9
    assert result.stderr.splitlines() == [result.stderr.strip()], result.stderr
    assert result.stderr.startswith("mnist-models: error: gateway http://127.0.0.1:")


def test_a_bad_gateway_url_in_the_environment_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("GATEWAY_URL", "gateway:8080")
    code, err = run_cli("scorecard")
    assert code == 2 and "bad environment setting: GATEWAY_URL" in err


def test_exit_codes_agree_with_the_runbook_table():
    text = (REPO / "docs" / "model-ops.md").read_text()
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    documented = {int(m) for m in re.findall(r"^\| (\d+) \|", section, re.MULTILINE)}
    assert documented == set(EXIT_CODES)
    assert len(set(EXIT_CODES)) == len(EXIT_CODES)


# -- the gateway client over a real socket --


class Recorded(BaseHTTPRequestHandler):
    """A loopback HTTP server answering what the test sets in `server.answers[path]`."""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.server.seen.append((self.command, self.path, dict(self.headers), self.rfile.read(length)))
        status, body, delay = self.server.answers.get(self.path.split("?")[0], (404, b"{}", 0))
        if delay:
            time.sleep(delay)  # a gateway that hangs: the client's deadline is what is tested
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the client gave up (the deadline test)

    do_GET = do_PUT = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorded)
    server.daemon_threads = True
    server.answers, server.seen = {}, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_put_sends_the_token_the_state_the_condition_and_the_event(http_server):
    path = "/v1/models/mnist/rollout"
    http_server.answers[path] = (200, json.dumps({"status": "running", "updated_at": "t2"}).encode(), 0)
    client = GatewayClient(f"http://127.0.0.1:{http_server.server_port}/", token="tok", timeout_s=5)
    answer = client.put_rollout(
        "mnist", {"status": "running"}, if_updated_at="t1", event={"actor": "a@b", "action": "start"}
    )
    assert answer["updated_at"] == "t2"
    method, seen_path, headers, body = http_server.seen[-1]
    assert (method, seen_path, headers["Authorization"]) == ("PUT", path, "Bearer tok")
    assert json.loads(body) == {
        "status": "running",
        "if_updated_at": "t1",
        "event": {"actor": "a@b", "action": "start"},
    }
    http_server.answers["/v1/models/mnist/scorecard"] = (200, b'{"versions": []}', 0)
    assert client.scorecard("mnist", window_s=120) == {"versions": []}
    method, seen_path, headers, _ = http_server.seen[-1]
    assert (method, seen_path) == ("GET", "/v1/models/mnist/scorecard?window=120")
    assert "Authorization" not in headers, "reads carry no token"


def test_errors_map_to_ops_errors_with_their_exit_codes(http_server):
    base = f"http://127.0.0.1:{http_server.server_port}"
    path = "/v1/models/mnist/rollout"
    client = GatewayClient(base, token="tok", timeout_s=5)
    conflict = {"error": {"code": "conflict", "message": "the rollout changed"}}
    http_server.answers[path] = (409, json.dumps(conflict).encode(), 0)
    with pytest.raises(RolloutConflict, match="409 conflict: the rollout changed") as raised:
        client.put_rollout("mnist", {}, if_updated_at=None, event=None)
    assert raised.value.exit_code == 10
    http_server.answers[path] = (401, b'{"error": {"code": "unauthorized", "message": "send a token"}}', 0)
    with pytest.raises(GatewayError, match="401 unauthorized.*check OPS_TOKEN") as raised:
        client.put_rollout("mnist", {}, if_updated_at=None, event=None)
    assert raised.value.exit_code == 9
    http_server.answers[path] = (502, b"<html>bad gateway</html>", 0)
    with pytest.raises(GatewayError, match="502 Bad Gateway: <html>bad gateway</html>"):
        client.rollout("mnist")
    http_server.answers[path] = (200, b"[1, 2]", 0)
    with pytest.raises(GatewayError, match="not a JSON object"):
        client.rollout("mnist")
    with pytest.raises(GatewayError, match="needs the gateway's ops token"):
        GatewayClient(base).put_rollout("mnist", {}, if_updated_at=None, event=None)


def test_a_hanging_gateway_hits_the_deadline_and_a_closed_port_is_unreachable(http_server):
    from deploy.local.readiness import free_port

    http_server.answers["/v1/models/mnist/scorecard"] = (200, b"{}", 3)
    started = time.monotonic()
    with pytest.raises(GatewayError, match="did not answer GET /v1/models/mnist/scorecard within 0.5s"):
        GatewayClient(f"http://127.0.0.1:{http_server.server_port}", timeout_s=0.5).scorecard("mnist")
    assert time.monotonic() - started < 2.5
    with pytest.raises(GatewayError, match="unreachable"):
        GatewayClient(f"http://127.0.0.1:{free_port()}", timeout_s=2).rollout("mnist")


def test_cli_errors_are_one_line_with_the_gateway_exit_code(http_server):
    from deploy.local.readiness import free_port

    out, err = _Capture(), _Capture()
    code = main(["--gateway", f"http://127.0.0.1:{free_port()}", "scorecard"], out=out, err=err)
    assert code == 9
    assert err.text.count("\n") == 1 and err.text.startswith("mnist-models: error: gateway http://127.0.0.1:")
    assert out.text == ""


class _Capture:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


# -- printing --


def test_the_scorecard_table_puts_versions_side_by_side():
    rows = [
        row(1, labels=400, correct=388, interval=[0.947, 0.985]),
        row(
            2,
            requests=120,
            errors=1,
            agreement={"with_version": 1, "compared": 80, "agreed": 79, "rate": 0.9875},
        ),
    ]
    rows[0]["error_rate"], rows[1]["error_rate"] = 0.0, 1 / 121
    text = scorecard_table({**card(*rows), "window": {"seconds": 600, "from": "a", "to": "b"}})
    lines = text.splitlines()
    assert lines[1].split() == ["VERSION", "1", "2"]
    assert lines[2].split() == ["role", "stable", "canary"]
    assert lines[3].split() == ["requests", "1000", "120"]
    assert "0.970 [0.947, 0.985]" in text and "0.988 vs 1 (80 pairs)" in text


def test_the_status_shows_state_effective_split_and_events():
    answer = {
        "state": {
            "status": "rolled_back",
            "canary_version": 3,
            "stable_version": 2,
            "canary_percent": 0,
            "steps": [10, 100],
            "step_index": 0,
            "reason": "guard agreement failed: 0.104 < 0.900",
        },
        "effective": {"canary_percent": 0, "shadow": False},
        "events": [
            {
                "at": "t",
                "actor": "a@h",
                "action": "rollback",
                "canary_version": 3,
                "canary_percent": 0,
                "detail": json.dumps({"reason": "guard agreement failed"}),
            },
        ],
    }
    text = rollout_status(answer)
    assert "rollout of version 3 (stable 2), step 1/2 (0 %): rolled_back" in text
    assert "reason: guard agreement failed: 0.104 < 0.900" in text
    assert "effective now: 0 % to canary, shadow off" in text
    assert text.splitlines()[-1].split()[:3] == ["t", "a@h", "rollback"]
    assert "no rollout stored" in rollout_status({"state": None, "effective": {}, "events": []})


# -- the driver against a fake gateway, operator and clock --

MODEL = "mnist"


class FakeClock:
    """The driver's clock; the driver's pauses advance it instead of sleeping (FastDriver)."""

    def __init__(self, start: float = 1796040000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class FakeGateway:
    """The gateway's rollout API as the driver and --abort see it: a conditional write on `updated_at`
    (a RolloutConflict when it moved), the checks the gateway applies to a running state (step_index within
    the steps, canary_percent == steps[step_index]), the events, and a scorecard. `on_scorecard`,
    `on_read` and `on_put` run another actor's move at a chosen moment."""

    def __init__(self) -> None:
        self.state: dict | None = None
        self.events: list[dict] = []
        self.writes: list[dict] = []
        self.card = card(row(1), row(2))
        self.on_scorecard = None
        self.on_read = None
        self._seq = 0

    def rollout(self, model: str) -> dict:
        answer = {"state": dict(self.state) if self.state else None, "effective": {}, "events": self.events}
        if self.on_read is not None:
            hook, self.on_read = self.on_read, None
            hook()
        return answer

    def put_rollout(self, model: str, state: dict, *, if_updated_at, event) -> dict:
        current = self.state
        if if_updated_at is None:
            if current is not None and current["status"] == "running":
                raise RolloutConflict("409 conflict: a rollout is running")
        elif current is None or current["updated_at"] != if_updated_at:
            raise RolloutConflict(f"409 conflict: the rollout changed since {if_updated_at}")
        steps = state["steps"]
        if not 0 <= state["step_index"] <= max(len(steps) - 1, 0):
            raise GatewayError("400 invalid_input: 'step_index' out of range")
        if state["status"] == "running" and steps and state["canary_percent"] != steps[state["step_index"]]:
            raise GatewayError("400 invalid_input: 'canary_percent' must be steps[step_index]")
        self._seq += 1
        self.state = {**state, "updated_at": f"2026-11-30T12:00:00.{self._seq:03d}Z"}
        self.writes.append(self.state)
        if event is not None:
            self.events.insert(0, {**event, "canary_percent": state["canary_percent"]})
        return {"state": dict(self.state)}

    def scorecard(self, model: str, *, window_s=None) -> dict:
        if self.on_scorecard is not None:
            self.on_scorecard()
        return self.card

    def actions(self) -> list[str]:
        return [e["action"] for e in reversed(self.events)]


class FakeConfigFile:
    def __init__(self, operator: FakeOperator) -> None:
        self.operator = operator

    def read(self):
        from serving.ops import model_config

        labels = "".join(
            f' version_labels {{ key: "{k}" value: {v} }}' for k, v in sorted(self.operator.labels.items())
        )
        return model_config.parse(
            f'model_config_list {{ config {{ name: "{MODEL}" base_path: "/m" model_platform: "tensorflow"'
            f" model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}{labels} }} }}"
        )


class FakeOperator:
    """Labels in memory. `promote_error` is raised by promote, after the label moved when `moved` says so
    (the history write failing) and before otherwise; `during_promote` runs inside promote."""

    def __init__(self) -> None:
        self.labels = {"stable": 1}
        self.calls: list[tuple[str, int]] = []
        self.config_file = FakeConfigFile(self)
        self.promote_error: Exception | None = None
        self.moved = False
        self.during_promote = None

    def canary(self, version: int, **_gate) -> None:
        self.calls.append(("canary", version))
        self.labels["canary"] = version

    def promote(self, version: int, **_gate) -> None:
        self.calls.append(("promote", version))
        if self.during_promote is not None:
            self.during_promote()
        if self.promote_error is not None and not self.moved:
            raise self.promote_error
        self.labels["stable"] = version
        if self.promote_error is not None:
            raise self.promote_error


def fast_driver(tmp_path, gateway, operator, clock, **options):
    from serving.ops.rollout import Driver

    class FastDriver(Driver):
        def _pause(self, seconds: float) -> None:
            clock.now += seconds

    for version in (1, 2):
        (tmp_path / str(version) / "assets.extra").mkdir(parents=True, exist_ok=True)
        (tmp_path / str(version) / "saved_model.pb").write_bytes(b"")
        (tmp_path / str(version) / "assets.extra" / "metrics.json").write_text(
            json.dumps({"test_accuracy": 0.99, "dataset": "mnist"})
        )
    lines: list[str] = []
    driver = FastDriver(
        gateway=gateway,
        operator=operator,
        model_name=MODEL,
        model_dir=tmp_path,
        limits=LIMITS,
        min_accuracy=0.9,
        poll_s=5.0,
        say=lines.append,
        who="driver@host",
        clock=clock,
        **options,
    )
    return driver, lines


@pytest.fixture
def rig(tmp_path):
    gateway, operator, clock = FakeGateway(), FakeOperator(), FakeClock()
    driver, lines = fast_driver(tmp_path, gateway, operator, clock)
    return driver, gateway, operator, clock, lines


def plan(*steps: int):
    from serving.ops.rollout import Plan

    return Plan(2, steps, 10, True)


def at_end_of_last_step(gateway: FakeGateway, clock: FakeClock, then) -> None:
    """Run `then` once, at the scorecard read that ends the last step (after the driver's last renewal)."""
    from serving.ops.rollout import parse_time

    def hook() -> None:
        s = gateway.state
        ends = parse_time(s["step_started_at"]) + s["step_seconds"]
        if s["status"] == "running" and s["step_index"] == len(s["steps"]) - 1 and clock() >= ends:
            gateway.on_scorecard = None
            then()

    gateway.on_scorecard = hook


def test_a_good_rollout_writes_each_steps_percent_then_promotes(rig):
    driver, gateway, operator, clock, lines = rig
    stored = driver.start(plan(10, 50, 100))
    assert stored["status"] == "promoted" and stored["canary_percent"] == 0
    assert operator.labels == {"stable": 2, "canary": 2}
    assert gateway.actions() == ["start", "step", "step", "promote"]
    running = [w for w in gateway.writes if w["status"] == "running"]
    assert {w["canary_percent"] for w in running} == {10, 50, 100}
    assert all(w["canary_percent"] == w["steps"][w["step_index"]] for w in running)
    assert lines[-1] == "promoted version 2: stable 1 -> 2; split back to 0 %"


def test_an_abort_at_the_end_of_the_last_step_is_not_overridden_by_the_promotion(rig):
    from serving.ops import rollout

    driver, gateway, operator, clock, _ = rig
    said: list[str] = []
    at_end_of_last_step(
        gateway, clock, lambda: rollout.abort(gateway, MODEL, say=said.append, who="ops@elsewhere")
    )
    with pytest.raises(RolloutConflict) as raised:
        driver.start(plan(50, 100))
    assert ("promote", 2) not in operator.calls and operator.labels["stable"] == 1
    assert "aborted by ops@elsewhere" in raised.value.message
    assert "version 2 not promoted, stable stays 1" in raised.value.message
    assert gateway.state["status"] == "aborted" and gateway.state["canary_percent"] == 0
    assert said == ["aborted the rollout of version 2 (stable 1), step 2/2 (100 %); all traffic to stable 1"]


def test_an_abort_while_the_label_moves_finds_the_rollout_promoted(rig):
    """The driver stores `promoted` before it moves the label: an abort after that point has nothing left to
    abort and says so, instead of being stored and then overridden by the label move."""
    from serving.ops import rollout

    driver, gateway, operator, _, _ = rig
    said: list[str] = []
    operator.during_promote = lambda: rollout.abort(gateway, MODEL, say=said.append, who="ops@elsewhere")
    stored = driver.start(plan(50, 100))
    assert stored["status"] == "promoted" and gateway.state["status"] == "promoted"
    assert operator.labels["stable"] == 2
    assert said == [
        f"no rollout of {MODEL} is running (the last one, of version 2, was promoted); nothing to abort"
    ]


def running_state(**changes) -> dict:
    state = {
        "status": "running",
        "canary_version": 2,
        "stable_version": 1,
        "canary_percent": 100,
        "shadow": True,
        "steps": [50, 100],
        "step_index": 1,
        "step_seconds": 10,
        "step_started_at": "2026-11-30T12:00:00.000+00:00",
        "lease_until": "2026-11-30T12:00:15.000+00:00",
        "started_by": "driver@host",
        "started_at": "2026-11-30T11:59:50.000+00:00",
        "reason": None,
    }
    return {**state, **changes}


def test_an_abort_that_loses_the_race_to_the_promotion_fails_and_says_so():
    """--abort reads a running rollout, then the driver's promotion lands before the abort's write: the abort
    cannot undo it, so it fails (exit 10) naming the way back, rather than saying 'nothing to abort'."""
    from serving.ops import rollout

    gateway = FakeGateway()
    gateway.put_rollout(MODEL, running_state(), if_updated_at=None, event=None)

    def the_driver_promotes() -> None:
        promoted = running_state(status="promoted", canary_percent=0)
        gateway.put_rollout(MODEL, promoted, if_updated_at=gateway.state["updated_at"], event=None)

    gateway.on_read = the_driver_promotes  # right after the abort's first read
    with pytest.raises(RolloutConflict) as raised:
        rollout.abort(gateway, MODEL, say=lambda line: None, who="ops@elsewhere")
    assert raised.value.exit_code == 10
    assert raised.value.message == (
        "not aborted: the rollout of version 2 (stable 1) was promoted meanwhile; its driver moves stable to "
        "version 2 (`mnist-models rollback` moves it back)"
    )
    assert gateway.state["status"] == "promoted"


def test_an_abort_that_loses_the_race_to_a_rollback_is_done():
    from serving.ops import rollout

    gateway = FakeGateway()
    gateway.put_rollout(MODEL, running_state(), if_updated_at=None, event=None)
    back = running_state(status="rolled_back", canary_percent=0, reason="guard agreement failed: 0.1 < 0.9")
    gateway.on_read = lambda: gateway.put_rollout(
        MODEL, back, if_updated_at=gateway.state["updated_at"], event=None
    )
    said: list[str] = []
    assert rollout.abort(gateway, MODEL, say=said.append, who="ops@elsewhere") is None
    assert said == [
        f"no rollout of {MODEL} is running (the last one, of version 2, was rolled_back: guard agreement "
        "failed: 0.1 < 0.9); nothing to abort"
    ]


def test_a_failed_label_move_after_the_promotion_is_stored_rolls_back(rig):
    from serving.ops.errors import LoadFailed

    driver, gateway, operator, _, lines = rig
    operator.promote_error = LoadFailed("version 2 of mnist failed to load: gone")
    with pytest.raises(LoadFailed):
        driver.start(plan(100))
    assert operator.labels["stable"] == 1
    assert gateway.actions() == ["start", "promote", "rollback"]
    assert gateway.state["status"] == "rolled_back" and gateway.state["canary_percent"] == 0
    assert gateway.state["reason"] == "promotion failed: version 2 of mnist failed to load: gone"
    assert "rolled back version 2: promotion failed" in lines[-1] and "stable stays 1" in lines[-1]


def test_a_label_moved_without_its_history_stays_promoted(rig):
    from serving.ops.errors import ConfigError

    driver, gateway, operator, _, _ = rig
    operator.promote_error = ConfigError("stable moved 1 -> 2 (config file and server), but the history ...")
    operator.moved = True
    with pytest.raises(ConfigError):
        driver.start(plan(100))
    assert operator.labels["stable"] == 2
    assert gateway.state["status"] == "promoted" and gateway.actions() == ["start", "promote"]


def test_a_signal_at_the_end_of_the_last_step_rolls_back_instead_of_promoting(rig):
    import signal

    from serving.ops.errors import RolloutInterrupted

    driver, gateway, operator, clock, _ = rig
    at_end_of_last_step(gateway, clock, lambda: setattr(driver.stop, "signum", signal.SIGTERM))
    with pytest.raises(RolloutInterrupted, match="interrupted by SIGTERM"):
        driver.start(plan(50, 100))
    assert ("promote", 2) not in operator.calls and operator.labels["stable"] == 1
    assert gateway.state["status"] == "rolled_back" and gateway.actions()[-1] == "rollback"


def interrupted(**changes) -> dict:
    """A stored running rollout whose driver died: its lease lapsed before the fake clock's now."""
    return {
        **running_state(step_index=0, canary_percent=50, lease_until="2026-11-30T11:00:00.000+00:00"),
        "updated_at": "2026-11-30T11:00:00.000Z",
        **changes,
    }


def test_resume_continues_at_the_stored_step_with_its_percentage(rig):
    driver, gateway, operator, _, lines = rig
    gateway.state = interrupted(steps=[10, 50, 100], step_index=1, canary_percent=50)
    stored = driver.resume()
    assert stored["status"] == "promoted" and operator.labels["stable"] == 2
    assert [(w["step_index"], w["canary_percent"]) for w in gateway.writes if w["status"] == "running"][
        0
    ] == (
        1,
        50,
    )
    assert gateway.actions() == ["resume", "step", "promote"]
    assert lines[0] == "resumed the rollout of version 2 (stable 1), step 2/3 (50 %); the step starts over"


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"steps": [], "step_index": 0}, "steps []: steps are percentages from 1 to 100"),
        ({"steps": [10, 100], "step_index": 2}, "step_index 2 is not a step of [10, 100]"),
        ({"steps": [10, 100], "step_index": -1}, "step_index -1 is not a step of [10, 100]"),
        (
            {"steps": [10, 50], "step_index": 0, "canary_percent": 10},
            "steps [10, 50]: the last step must be 100",
        ),
        (
            {"steps": [10, 100], "step_index": 0, "canary_percent": 100},
            "canary_percent 100 is not step 1's 10 %",
        ),
        ({"step_seconds": None}, "step_seconds None is not a whole number of seconds >= 1"),
        ({"stable_version": 2}, "canary_version 2 and stable_version 2 must be two versions"),
    ],
)
def test_resume_of_an_inconsistent_stored_rollout_changes_nothing(rig, changes, problem):
    from serving.ops.errors import NoRollout

    driver, gateway, operator, _, _ = rig
    gateway.state = interrupted(**changes)
    with pytest.raises(NoRollout) as raised:
        driver.resume()
    assert raised.value.message == (
        f"the stored rollout of {MODEL} cannot be resumed: {problem}; nothing changed (its lease has lapsed: "
        "the gateway sends all traffic to stable); end it with `mnist-models rollout --abort`"
    )
    assert operator.calls == [] and gateway.writes == []


def test_abort_ends_a_stored_rollout_whose_step_index_is_past_its_steps():
    from serving.ops import rollout

    gateway = FakeGateway()
    gateway.state = interrupted(steps=[10, 100], step_index=5)
    ended = rollout.abort(gateway, MODEL, say=lambda line: None, who="ops@elsewhere")
    assert ended["status"] == "aborted" and gateway.state["canary_percent"] == 0
    assert gateway.state["step_index"] == 1


def test_an_unexpected_error_while_driving_rolls_back_before_it_propagates(tmp_path):
    gateway, operator, clock = FakeGateway(), FakeOperator(), FakeClock()
    polls: list[int] = []

    def progress(state, decision, left) -> None:
        polls.append(state["canary_percent"])
        if len(polls) == 2:
            raise RuntimeError("a bug in the progress line")

    driver, lines = fast_driver(tmp_path, gateway, operator, clock, progress=progress)
    with pytest.raises(RuntimeError, match="a bug in the progress line"):
        driver.start(plan(50, 100))
    assert gateway.state["status"] == "rolled_back" and gateway.state["canary_percent"] == 0
    assert gateway.state["reason"] == "driver error: RuntimeError: a bug in the progress line"
    assert operator.labels["stable"] == 1
    assert lines[-1] == (
        "rolled back version 2 (stable 1), step 1/2 (0 %): driver error: RuntimeError: a bug in the progress "
        "line; all traffic to stable 1"
    )


def test_an_unexpected_error_moving_the_label_rolls_back_once(rig):
    driver, gateway, operator, _, _ = rig
    operator.promote_error = RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        driver.start(plan(100))
    assert operator.labels["stable"] == 1
    assert gateway.actions() == ["start", "promote", "rollback"]
    assert gateway.state["reason"] == "promotion failed: RuntimeError: boom"
