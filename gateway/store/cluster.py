"""The one place that builds a driver `Cluster`: policies, timeouts, protocol (store and migrations)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from cassandra import AuthenticationFailed, ConsistencyLevel
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable
from cassandra.policies import (
    DCAwareRoundRobinPolicy,
    ExponentialReconnectionPolicy,
    TokenAwarePolicy,
)

from gateway.replication import serial_consistency_for

# The driver logs each failed (re)connection as a warning with a traceback; ours say what happened once.
_NOISY_DRIVER_LOGGERS = (
    "cassandra.cluster",
    "cassandra.connection",
    "cassandra.pool",
    "cassandra.io",
    "cassandra.policies",
    "cassandra.protocol",
)


@dataclass(frozen=True)
class Credentials:
    """A Cassandra role's name and password (PasswordAuthenticator); the password stays out of reprs."""

    username: str
    password: str = field(repr=False)


def authentication_failure(exc: BaseException) -> str | None:
    """The server's reason when `exc` (from `Cluster.connect`) is a refused login, else None: a wrong password
    is reported at once instead of being retried like a node that is still starting."""
    errors = exc.errors.values() if isinstance(exc, NoHostAvailable) and exc.errors else [exc]
    for error in errors:
        if isinstance(error, AuthenticationFailed):
            return str(error).splitlines()[0][:300]
    return None


def quiet_driver_logs(level: int = logging.ERROR) -> None:
    for name in _NOISY_DRIVER_LOGGERS:
        logging.getLogger(name).setLevel(level)


def parse_hosts(hosts: str | Sequence[str]) -> list[str]:
    """`"a,b , c"` or a list -> `["a", "b", "c"]`; an empty result is an error."""
    items = hosts.split(",") if isinstance(hosts, str) else list(hosts)
    parsed = [h.strip() for h in items if h and h.strip()]
    if not parsed:
        raise ValueError("no Cassandra host given (CASSANDRA_HOSTS is empty)")
    return parsed


def build_cluster(
    hosts: str | Sequence[str],
    port: int,
    *,
    request_timeout: float = 5.0,
    connect_timeout: float = 3.0,
    local_dc: str | None = None,
    credentials: Credentials | None = None,
    consistency: str = "ONE",
) -> Cluster:
    """A `Cluster`, not yet connected: call `.connect()` after forking (driver threads do not survive it).
    With `credentials` it logs in (PasswordAuthenticator); without, the node must allow anonymous clients.

    Every host in `hosts` is a contact point (any one that answers is enough to learn the ring). Requests go
    to a replica of their partition (token-aware) in the local data centre (`local_dc`, or the one of the
    first contact point that answers), at `consistency` (a name from gateway/replication.py); lightweight
    transactions use the matching serial level (LOCAL_SERIAL for a LOCAL_ level)."""
    load_balancing = TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=local_dc))
    profile = ExecutionProfile(
        load_balancing_policy=load_balancing,
        request_timeout=request_timeout,
        consistency_level=ConsistencyLevel.name_to_value[consistency],
        serial_consistency_level=ConsistencyLevel.name_to_value[serial_consistency_for(consistency)],
    )
    return Cluster(
        parse_hosts(hosts),
        port=int(port),
        protocol_version=5,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        connect_timeout=connect_timeout,
        control_connection_timeout=connect_timeout,
        # Notice a node that is back within 2 s (the default backs off up to 10 minutes), and never stop
        # trying (the default gives up after 64 attempts, ~2 minutes here: a longer outage then left the store
        # unable to ship its log until restarted). One TCP connect per down host every 2 s costs nothing.
        reconnection_policy=ExponentialReconnectionPolicy(base_delay=0.5, max_delay=2.0, max_attempts=None),
        idle_heartbeat_interval=10,
        auth_provider=(
            PlainTextAuthProvider(credentials.username, credentials.password) if credentials else None
        ),
    )
