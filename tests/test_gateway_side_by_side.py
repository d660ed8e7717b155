"""Two gateways side by side, as replicas of one Deployment: two `mnist-gateway` processes, each with its own
write-ahead log directory, on one Cassandra keyspace and one model server, used in turn (two URLs
alternately, as a load balancer would). What one answers, the other reads back.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import requests

from tests.fixtures.cassandra_node import qualified
from tests.test_gateway_e2e import as_upload, mnist_test_set, predict
from tests.waiting import eventually

__all__ = ["mnist_test_set"]  # a fixture, imported for pytest

PER_GATEWAY = 30


def listed_ids(url: str) -> set[str]:
    """Every prediction id `GET /v1/predictions` pages through (newest first, 100 a page)."""
    ids: set[str] = set()
    cursor = None
    while True:
        params = {"limit": 100, **({"cursor": cursor} if cursor else {})}
        page = requests.get(f"{url}/v1/predictions", params=params, timeout=10).json()
        ids |= {item["id"] for item in page["items"]}
        cursor = page["next_cursor"]
        if not cursor or not page["items"]:
            return ids


def test_two_gateways_share_one_history(start_gateway, mnist_test_set, clean_tables, cassandra_session):
    first, second = start_gateway(), start_gateway()
    assert first.env["GATEWAY_SPOOL_DIR"] != second.env["GATEWAY_SPOOL_DIR"]
    images, labels = mnist_test_set
    urls = [first.url, second.url] * PER_GATEWAY  # in turn
    uploads = [as_upload(images[i % 20]) for i in range(len(urls))]

    def ask(i: int) -> tuple[str, str]:
        r = predict(urls[i], uploads[i])
        assert r.status_code == 200, r.text
        return urls[i], r.json()["id"]

    with ThreadPoolExecutor(6) as pool:  # concurrent, so both logs write at the same moments
        answers = list(pool.map(ask, range(len(urls))))
    ids = [prediction_id for _, prediction_id in answers]
    assert len(set(ids)) == len(ids) == 2 * PER_GATEWAY  # no id collides, not even at the same instant

    # Both list everything either answered, once the logs shipped it.
    for url in (first.url, second.url):
        eventually(lambda url=url: set(ids) <= listed_ids(url), what=f"{url} to list every prediction")
    by_id = cassandra_session.prepare(
        "SELECT id FROM " + qualified(clean_tables, "predictions_by_id") + " WHERE id = ?"
    )
    stored = [cassandra_session.execute(by_id, [uuid.UUID(i)]).one() for i in ids]
    assert all(row is not None for row in stored)  # one row each: nothing overwrote another

    # Feedback through one gateway on a prediction the other made is visible through both.
    made_by_second = next(prediction_id for url, prediction_id in answers if url == second.url)
    label = int(labels[0])
    r = requests.post(f"{first.url}/v1/predictions/{made_by_second}/feedback", json={"label": label})
    assert r.status_code == 200, r.text
    for url in (second.url, first.url):
        assert requests.get(f"{url}/v1/predictions/{made_by_second}", timeout=10).json()["feedback"] == label
    # A second label through the other gateway: the first one stands (first label wins, across gateways).
    again = requests.post(
        f"{second.url}/v1/predictions/{made_by_second}/feedback", json={"label": (label + 1) % 10}
    )
    assert again.status_code == 409, again.text
    assert requests.get(f"{first.url}/v1/predictions/{made_by_second}").json()["feedback"] == label

    # Both read the same scorecard: its numbers are Cassandra's counters, not a process's own.
    model = first.env.get("MODEL_NAME", "mnist")

    def cards() -> list[dict]:
        return [
            requests.get(f"{url}/v1/models/{model}/scorecard", params={"window": 900}, timeout=30).json()
            for url in (first.url, second.url)
        ]

    def same_numbers() -> list[dict] | None:
        a, b = cards()
        answered = sum(v["requests"] for v in a["versions"])
        agree = (a["stable_version"], a["versions"]) == (b["stable_version"], b["versions"])
        return [a, b] if agree and answered >= 2 * PER_GATEWAY else None

    a, _ = eventually(same_numbers, what="both gateways to show the same scorecard")
    assert a["stable_version"] is not None


def test_a_rollout_written_through_one_gateway_is_read_through_the_other(start_gateway):
    first, second = start_gateway(), start_gateway()
    model = f"side_{uuid.uuid4().hex[:12]}"  # its own row: no other test's routing changes
    now = datetime.now(UTC)
    body = {
        "status": "running",
        "canary_version": 2,
        "stable_version": 1,
        "canary_percent": 25,
        "shadow": True,
        "steps": [25, 100],
        "step_index": 0,
        "step_seconds": 60,
        "step_started_at": now.isoformat(),
        "lease_until": (now + timedelta(minutes=5)).isoformat(),
        "started_by": "tests",
        "started_at": now.isoformat(),
        "reason": None,
        "if_updated_at": None,
        "event": {"actor": "tests", "action": "start", "detail": None},
    }
    auth = {"Authorization": f"Bearer {first.env['OPS_TOKEN']}"}
    put = requests.put(f"{first.url}/v1/models/{model}/rollout", json=body, headers=auth, timeout=30)
    assert put.status_code == 200, put.text
    read = requests.get(f"{second.url}/v1/models/{model}/rollout", timeout=30).json()
    assert read["state"] == put.json()["state"]
    assert read["effective"] == {"canary_percent": 25, "shadow": True}
    assert [e["action"] for e in read["events"]] == ["start"]
