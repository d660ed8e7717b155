"""How prediction data is replicated and how many replicas answer: `CASSANDRA_REPLICATION` and
`CASSANDRA_CONSISTENCY`, parsed and checked here once (for the gateway's settings and `mnist-migrate`).

No driver import: the settings use it, and the store maps the level names onto the driver's constants.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DATACENTER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_FACTOR = 9
# The levels a client may ask for reads and writes (ANY: writes only, and may lose data; SERIAL: LWTs only).
CONSISTENCY_LEVELS = ("ONE", "TWO", "THREE", "QUORUM", "LOCAL_ONE", "LOCAL_QUORUM", "EACH_QUORUM", "ALL")
_REPLICAS_NEEDED = {"TWO": 2, "THREE": 3}


class ReplicationError(ValueError):
    """CASSANDRA_REPLICATION or CASSANDRA_CONSISTENCY is malformed or cannot work together."""


@dataclass(frozen=True)
class Replication:
    """`"1"` -> SimpleStrategy with that factor; `"dc1:3,dc2:2"` -> NetworkTopologyStrategy per DC."""

    strategy: str
    factors: tuple[tuple[str, int], ...]

    @classmethod
    def parse(cls, text: str) -> Replication:
        text = (text or "").strip()
        if text.isdigit():
            return cls("SimpleStrategy", (("replication_factor", _factor(text)),))
        factors = []
        for item in text.split(","):
            dc, sep, factor = item.strip().partition(":")
            if not sep or not DATACENTER_RE.fullmatch(dc.strip()):
                raise ReplicationError(f"invalid replication {text!r}: use a factor (`1`) or `dc1:3,dc2:3`")
            factors.append((dc.strip(), _factor(factor.strip())))
        if len({dc for dc, _ in factors}) != len(factors):
            raise ReplicationError(f"invalid replication {text!r}: a data centre is named twice")
        return cls("NetworkTopologyStrategy", tuple(factors))

    @property
    def smallest_factor(self) -> int:
        """Replicas of each row in the data centre that has the fewest (where a quorum is hardest)."""
        return min(factor for _, factor in self.factors)

    def cql_map(self) -> str:
        # Safe to render: the strategy is one of two constants, names matched DATACENTER_RE, factors are ints.
        items = [f"'class': '{self.strategy}'"] + [f"'{name}': {factor}" for name, factor in self.factors]
        return "{" + ", ".join(items) + "}"

    def describe(self) -> str:
        return f"{self.strategy} " + ", ".join(f"{name}={factor}" for name, factor in self.factors)


def _factor(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_FACTOR:
        raise ReplicationError(f"invalid replication factor {text!r}: an integer from 1 to {MAX_FACTOR}")
    return int(text)


def consistency_for(replication: Replication, requested: str = "") -> str:
    """The consistency level of reads and writes: `requested` (checked), or by default LOCAL_QUORUM when
    every data centre keeps 3 or more replicas (one node down changes nothing) and ONE below that (a quorum
    of 2 would stop writes whenever either replica is down)."""
    level = (requested or "").strip().upper()
    if not level:
        return "LOCAL_QUORUM" if replication.smallest_factor >= 3 else "ONE"
    if level not in CONSISTENCY_LEVELS:
        raise ReplicationError(
            f"invalid consistency {requested!r}: one of {', '.join(CONSISTENCY_LEVELS)} (or empty: derived)"
        )
    needed = _REPLICAS_NEEDED.get(level, 1)
    if needed > replication.smallest_factor:
        raise ReplicationError(
            f"consistency {level} needs {needed} replicas but replication {replication.describe()} keeps "
            f"{replication.smallest_factor}"
        )
    return level


def serial_consistency_for(level: str) -> str:
    """The Paxos phase of lightweight transactions: within the local data centre when the level is local."""
    return "LOCAL_SERIAL" if level.startswith("LOCAL_") else "SERIAL"
