"""Schemathesis against the live gateway: every check, on every operation of gateway/openapi.yaml.

The real `mnist-gateway` (model server and Cassandra behind it) gets a few hundred generated requests, valid
and invalid: none may be a server error, a schema-valid one may not be rejected (uploads aside, see
tests/schemathesis.toml), an invalid one may not be accepted, and every answer must match the document.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.fixtures.cassandra_node import qualified
from tests.fixtures.gateway_server import OPS_TOKEN
from tests.waiting import eventually

CONFIG = Path(__file__).with_name("schemathesis.toml")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]  # the first gateway test also starts its servers


def test_the_gateway_keeps_every_promise_of_its_openapi_document(
    gateway_server, tmp_path, cassandra_session, cassandra_keyspace
):
    argv = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(CONFIG),
        "run",
        f"{gateway_server.url}/openapi.json",
        "--checks",
        "all",
        "--header",
        f"Authorization: Bearer {OPS_TOKEN}",
        "--seed",
        "20261130",
        "--workers",
        "1",  # hypothesis' lambda descriptions parse source with `ast`, which is not thread-safe here
        "--request-timeout",
        "30",
        # Bounded: the examples per operation (tests/schemathesis.toml) and the whole run's time.
        "--max-time",
        "120",
        "--no-color",
    ]
    report = tmp_path / "schemathesis.txt"
    with report.open("w") as out:
        try:
            run = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, timeout=420)
            code: int | None = run.returncode
        except subprocess.TimeoutExpired:
            code = None
    text = report.read_text(errors="replace")
    explanation = f"{text[-6000:]}\n--- gateway log ---\n{gateway_server.log_text()[-4000:]}"
    # The run may have changed the shared gateway's log level through /ops/log-level: put it back.
    with contextlib.suppress(requests.RequestException):
        requests.post(
            f"{gateway_server.url}/ops/log-level",
            json={"level": "INFO"},
            headers={"Authorization": f"Bearer {OPS_TOKEN}"},
            timeout=30,
        )
    # It also wrote rollout states (the gateway's own model's among them, with made-up versions) into the
    # session's keyspace: later tests start from no rollout.
    for table in ("rollouts", "rollout_events"):
        cassandra_session.execute(f"TRUNCATE {qualified(cassandra_keyspace, table)}", timeout=60)
    model = gateway_server.env.get("MODEL_NAME", "mnist")
    eventually(
        lambda: (
            requests.get(f"{gateway_server.url}/v1/models/{model}/rollout", timeout=30).json()["state"]
            is None
        ),
        what="no rollout stored",
    )
    assert code == 0, explanation
    # Every operation of the document was exercised, with more than one case each.
    selected, total = map(int, re.search(r"Selected: (\d+)/(\d+)", text).groups())
    tested = int(re.search(r"Tested: (\d+)", text).group(1))
    generated, passed = map(int, re.search(r"(\d+) generated, (\d+) passed", text).groups())
    assert selected == total == tested and generated == passed > 2 * total, text[-3000:]
