"""The gateway's settings: every environment variable it reads, in one place, validated at start.

`Settings.from_env()` is called once by the app factory (or by `mnist-gateway`); tests build `Settings(...)`
directly or use `Settings.from_env(env)` with a plain dict. Nothing else in the gateway reads `os.environ`.

- `GATEWAY_ENV` (`development`): `development` or `production`; production refuses an empty or weak OPS_TOKEN.
- `GATEWAY_HOST` (`0.0.0.0`), `GATEWAY_PORT` (`8080`): where `mnist-gateway` listens.
- `GATEWAY_WORKERS` (`1`): worker processes (metrics switch to multiprocess mode above 1).
- `GATEWAY_THREADS` (`16`): threads per worker (requests mostly wait on gRPC, so threads go far).
- `GATEWAY_GRACEFUL_TIMEOUT_S` (`20`): time a worker gets to finish requests and flush the store on shutdown.
- `GATEWAY_WORKER_LIFETIME_S` (`0`): replace each worker gracefully after this long (0: never; else >= 60).
- `GATEWAY_MAX_UPLOAD_BYTES` (`10485760`): largest request body (the image file part is bounded by it alone);
  more is a 413.
- `GATEWAY_MAX_IMAGE_PIXELS` (`40000000`): largest decoded image (width x height); more is a 413. At most
  89478485, Pillow's own limit.
- `GATEWAY_MAX_FORM_FIELD_BYTES` (`131072`): largest multipart form field other than a file, and largest part
  headers; more is a 413. At least 131072: werkzeug bounds its multipart buffer by it
  (gateway/request_limits.py).
- `GATEWAY_MAX_FORM_PARTS` (`16`): most parts in a multipart form; more is a 413.
- `GATEWAY_SPOOL_DIR` (`.state/gateway-spool`): the store's write-ahead log: every prediction is logged here
  before its answer leaves and removed once Cassandra acknowledged it.
- `GATEWAY_WAL_MAX_BYTES` (`268435456`): cap on the log's size per worker process; when full, predictions are
  answered 503 (counted in `gateway_wal_refused_total`) and nothing already logged is dropped.
- `GATEWAY_WAL_SYNC` (`fsync`): `fsync` answers once the record is fsynced (survives a machine crash; fsyncs
  shared by concurrent requests); `write` once the kernel has it (survives a killed process, not a machine
  crash; no disk wait).
- `GATEWAY_PAGE_SIZE` (`20`): default page size of `GET /v1/predictions` (at most 100).
- `GATEWAY_RETRY_AFTER_S` (`5`): `Retry-After` seconds sent with 503 answers.
- `GATEWAY_RATE_LIMIT` (`20000/minute`): requests per client address to the write routes (predictions,
  feedback), per worker, as `N/second|minute|hour|day` (several separated by `;`); more is a 429.
- `MODEL_SERVER_GRPC` (`localhost:8500`): the model servers' (TF Serving or `mnist-serve`) gRPC address:
  `host:port`; several replicas as `ip:port,ip:port` (IP literals, all IPv4 or all IPv6, at most 64); or
  `dns:///name:port`, a name resolving to every replica (a headless Kubernetes Service). Calls are spread by
  gRPC's `round_robin` over the replicas its health checks find ready (gateway/model_client.py).
- `MODEL_NAME` (`mnist`), `MODEL_LABEL` (`stable`): the model asked, and the label used unless a request asks.
- `MODEL_TIMEOUT_S` (`5`): deadline of each model call; `MODEL_RETRIES` (`2`): retries of UNAVAILABLE calls.
- `GATEWAY_MODEL_MAX_BATCH` (`32`): most images in one Predict call when concurrent requests share it
  (gateway/batching.py; 1-1000, 1 sends each request alone); `GATEWAY_MODEL_CONCURRENCY` (`2`): Predict calls
  in flight per model version and worker before requests wait to share the next (1-64).
- `CASSANDRA_HOSTS` (`127.0.0.1`, comma-separated), `CASSANDRA_PORT` (`9042`), `CASSANDRA_KEYSPACE` (`mnist`).
- `CASSANDRA_LOCAL_DC` (empty: the driver picks): the data centre whose nodes the gateway talks to.
- `CASSANDRA_REPLICATION` (`1`): the keyspace's replication as `mnist-migrate` creates it (`3`, or
  `dc1:3,dc2:3`); the gateway reads it only to derive the default consistency.
- `CASSANDRA_CONSISTENCY` (empty: derived): consistency of the store's reads and writes; by default
  LOCAL_QUORUM when every data centre keeps 3+ replicas, else ONE. Lightweight transactions (feedback) use
  LOCAL_SERIAL with a LOCAL_ level, else SERIAL (gateway/replication.py).
- `CASSANDRA_USERNAME`, `CASSANDRA_PASSWORD` (empty): the login (PasswordAuthenticator), both or neither;
  required in production. From a Secret or `.env`, never from the ConfigMap.
- `CASSANDRA_TTL_DAYS` (`90`): how long prediction rows live (0: forever); feedback rows have no TTL.
- `CASSANDRA_WRITE_LINGER_MS` (`50`): how long the store's shipper waits for more predictions before sending
  (fewer, larger requests: less CPU in the gateway and in Cassandra; 0 sends at once).
- `GATEWAY_ROLLOUT_REFRESH_S` (`2`): how often, at most, each worker re-reads the model's rollout state from
  Cassandra (0.1-300); every replica applies a change within this.
- `GATEWAY_SHADOW_QUEUE` (`64`): shadow copies waiting for the other version, per worker (1-10000); more are
  dropped (counted in `gateway_shadow_copies_total{outcome="dropped"}`), never waited for.
- `OPS_TOKEN` (empty): bearer token of the `/ops/*` endpoints, printable ASCII; empty disables them
  (refused in production).
- `LOG_LEVEL` (`INFO`): level of the JSON logs on stderr.

`MODEL_BASE_PATH` and `MODEL_SERVER_REST` belong to the model server and the ops tools: the gateway ignores
them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from limits import parse_many

from gateway.replication import Replication, ReplicationError, consistency_for

ENVIRONMENTS = ("development", "production")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
MAX_PAGE_SIZE = 100
MIN_WAL_BYTES, MAX_WAL_BYTES = 1024 * 1024, 1024**4  # at least a few hundred predictions, at most 1 TiB
WAL_SYNC_MODES = ("fsync", "write")
# A model version label, as MODEL_LABEL or `?label=` (gateway/openapi.yaml repeats it; a test pins the copy).
LABEL_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
LABEL_RULE = "1-64 letters, digits, '.', '_' or '-'"
_LABEL_RE = re.compile(LABEL_PATTERN)


def is_label(value: str) -> bool:
    return bool(_LABEL_RE.fullmatch(value))  # fullmatch: `$` alone would let a trailing newline through


# The prediction keyspace's name: the rule of `mnist-migrate`, which creates it, and of the store.
KEYSPACE_PATTERN = r"[a-z][a-z0-9_]{0,47}"
_KEYSPACE_RE = re.compile(KEYSPACE_PATTERN)
# Werkzeug's multipart decoder holds a 64 KiB read chunk plus up to a boundary's length (bounded by the header
# size limit) in a buffer that the form field limit also bounds: below this, file uploads fail by their bytes.
MIN_FORM_FIELD_BYTES = 128 * 1024
# Pillow's decompression-bomb limit (Image.MAX_IMAGE_PIXELS): above it Pillow, not the setting, would refuse.
MAX_IMAGE_PIXELS = 89_478_485
MAX_MODEL_SERVERS = 64  # addresses in one MODEL_SERVER_GRPC list (a larger fleet: a dns:/// name)
DNS_SCHEME = "dns:///"
_WEAK_TOKENS = {"changeme", "changethis", "secret", "token", "password", "ops"}


class SettingsError(ValueError):
    """A setting is missing, malformed or unsafe; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    env: str = "development"
    host: str = "0.0.0.0"
    port: int = 8080
    workers: int = 1
    threads: int = 16
    graceful_timeout_s: int = 20
    worker_lifetime_s: int = 0
    max_upload_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_form_field_bytes: int = MIN_FORM_FIELD_BYTES
    max_form_parts: int = 16
    spool_dir: str = ".state/gateway-spool"
    wal_max_bytes: int = 256 * 1024 * 1024
    wal_sync: str = "fsync"
    page_size: int = 20
    retry_after_s: int = 5
    rate_limit: str = "20000/minute"
    model_server_grpc: str = "localhost:8500"
    model_name: str = "mnist"
    model_label: str = "stable"
    model_timeout_s: float = 5.0
    model_retries: int = 2
    model_max_batch: int = 32
    model_concurrency: int = 2
    cassandra_hosts: tuple[str, ...] = ("127.0.0.1",)
    cassandra_port: int = 9042
    cassandra_keyspace: str = "mnist"
    cassandra_local_dc: str = ""
    cassandra_replication: str = "1"
    cassandra_consistency: str = ""
    cassandra_username: str = ""
    cassandra_password: str = dataclasses.field(default="", repr=False)
    cassandra_ttl_days: int = 90
    cassandra_write_linger_ms: int = 50
    rollout_refresh_s: float = 2.0
    shadow_queue: int = 64
    ops_token: str = ""
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def get(name: str, default: object) -> str:
            value = env.get(name)
            return str(default) if value is None or value.strip() == "" else value.strip()

        def integer(name: str, default: int) -> int:
            raw = get(name, default)
            try:
                return int(raw)
            except ValueError:
                raise SettingsError(f"{name} must be an integer, got {raw!r}") from None

        def number(name: str, default: float) -> float:
            raw = get(name, default)
            try:
                return float(raw)
            except ValueError:
                raise SettingsError(f"{name} must be a number, got {raw!r}") from None

        d = cls.__dataclass_fields__
        hosts = tuple(h.strip() for h in get("CASSANDRA_HOSTS", "127.0.0.1").split(",") if h.strip())
        return cls(
            env=get("GATEWAY_ENV", d["env"].default).lower(),
            host=get("GATEWAY_HOST", d["host"].default),
            port=integer("GATEWAY_PORT", d["port"].default),
            workers=integer("GATEWAY_WORKERS", d["workers"].default),
            threads=integer("GATEWAY_THREADS", d["threads"].default),
            graceful_timeout_s=integer("GATEWAY_GRACEFUL_TIMEOUT_S", d["graceful_timeout_s"].default),
            worker_lifetime_s=integer("GATEWAY_WORKER_LIFETIME_S", d["worker_lifetime_s"].default),
            max_upload_bytes=integer("GATEWAY_MAX_UPLOAD_BYTES", d["max_upload_bytes"].default),
            max_image_pixels=integer("GATEWAY_MAX_IMAGE_PIXELS", d["max_image_pixels"].default),
            max_form_field_bytes=integer("GATEWAY_MAX_FORM_FIELD_BYTES", d["max_form_field_bytes"].default),
            max_form_parts=integer("GATEWAY_MAX_FORM_PARTS", d["max_form_parts"].default),
            spool_dir=get("GATEWAY_SPOOL_DIR", d["spool_dir"].default),
            wal_max_bytes=integer("GATEWAY_WAL_MAX_BYTES", d["wal_max_bytes"].default),
            wal_sync=get("GATEWAY_WAL_SYNC", d["wal_sync"].default).lower(),
            page_size=integer("GATEWAY_PAGE_SIZE", d["page_size"].default),
            retry_after_s=integer("GATEWAY_RETRY_AFTER_S", d["retry_after_s"].default),
            rate_limit=get("GATEWAY_RATE_LIMIT", d["rate_limit"].default),
            model_server_grpc=get("MODEL_SERVER_GRPC", d["model_server_grpc"].default),
            model_name=get("MODEL_NAME", d["model_name"].default),
            model_label=get("MODEL_LABEL", d["model_label"].default),
            model_timeout_s=number("MODEL_TIMEOUT_S", d["model_timeout_s"].default),
            model_retries=integer("MODEL_RETRIES", d["model_retries"].default),
            model_max_batch=integer("GATEWAY_MODEL_MAX_BATCH", d["model_max_batch"].default),
            model_concurrency=integer("GATEWAY_MODEL_CONCURRENCY", d["model_concurrency"].default),
            cassandra_hosts=hosts,
            cassandra_port=integer("CASSANDRA_PORT", d["cassandra_port"].default),
            cassandra_keyspace=get("CASSANDRA_KEYSPACE", d["cassandra_keyspace"].default),
            cassandra_local_dc=env.get("CASSANDRA_LOCAL_DC", "").strip(),
            cassandra_replication=get("CASSANDRA_REPLICATION", d["cassandra_replication"].default),
            cassandra_consistency=env.get("CASSANDRA_CONSISTENCY", "").strip().upper(),
            cassandra_username=env.get("CASSANDRA_USERNAME", "").strip(),
            cassandra_password=env.get("CASSANDRA_PASSWORD", ""),
            cassandra_ttl_days=integer("CASSANDRA_TTL_DAYS", d["cassandra_ttl_days"].default),
            cassandra_write_linger_ms=integer(
                "CASSANDRA_WRITE_LINGER_MS", d["cassandra_write_linger_ms"].default
            ),
            rollout_refresh_s=number("GATEWAY_ROLLOUT_REFRESH_S", d["rollout_refresh_s"].default),
            shadow_queue=integer("GATEWAY_SHADOW_QUEUE", d["shadow_queue"].default),
            ops_token=env.get("OPS_TOKEN", "").strip(),
            log_level=get("LOG_LEVEL", d["log_level"].default).upper(),
        )

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise SettingsError(message)

        check(
            self.env in ENVIRONMENTS,
            f"GATEWAY_ENV must be one of {', '.join(ENVIRONMENTS)}, got {self.env!r}",
        )
        check(0 < self.port < 65536, f"GATEWAY_PORT must be a TCP port (1-65535), got {self.port}")
        check(1 <= self.workers <= 64, f"GATEWAY_WORKERS must be 1-64, got {self.workers}")
        check(1 <= self.threads <= 256, f"GATEWAY_THREADS must be 1-256, got {self.threads}")
        check(self.graceful_timeout_s >= 1, "GATEWAY_GRACEFUL_TIMEOUT_S must be at least 1")
        check(
            self.worker_lifetime_s == 0 or 60 <= self.worker_lifetime_s <= 30 * 86400,
            "GATEWAY_WORKER_LIFETIME_S must be 0 (never) or 60-2592000",
        )
        check(self.max_upload_bytes >= 1024, "GATEWAY_MAX_UPLOAD_BYTES must be at least 1024")
        check(
            28 * 28 <= self.max_image_pixels <= MAX_IMAGE_PIXELS,
            f"GATEWAY_MAX_IMAGE_PIXELS must be 784-{MAX_IMAGE_PIXELS} (Pillow's own bomb limit)",
        )
        check(
            MIN_FORM_FIELD_BYTES <= self.max_form_field_bytes <= 16 * 1024 * 1024,
            f"GATEWAY_MAX_FORM_FIELD_BYTES must be {MIN_FORM_FIELD_BYTES}-16777216",
        )
        check(1 <= self.max_form_parts <= 1000, "GATEWAY_MAX_FORM_PARTS must be 1-1000")
        check(bool(self.spool_dir), "GATEWAY_SPOOL_DIR must not be empty")
        check(
            MIN_WAL_BYTES <= self.wal_max_bytes <= MAX_WAL_BYTES,
            f"GATEWAY_WAL_MAX_BYTES must be {MIN_WAL_BYTES}-{MAX_WAL_BYTES}, got {self.wal_max_bytes}",
        )
        check(
            self.wal_sync in WAL_SYNC_MODES,
            f"GATEWAY_WAL_SYNC must be one of {', '.join(WAL_SYNC_MODES)}, got {self.wal_sync!r}",
        )
        check(1 <= self.page_size <= MAX_PAGE_SIZE, f"GATEWAY_PAGE_SIZE must be 1-{MAX_PAGE_SIZE}")
        check(self.retry_after_s >= 1, "GATEWAY_RETRY_AFTER_S must be at least 1")
        check(
            _is_rate_limit(self.rate_limit),
            f"GATEWAY_RATE_LIMIT must be like 600/minute (several separated by ';'), got {self.rate_limit!r}",
        )
        model_server_target(self.model_server_grpc)  # raises SettingsError naming MODEL_SERVER_GRPC
        check(bool(self.model_name), "MODEL_NAME must not be empty")
        check(is_label(self.model_label), f"MODEL_LABEL must be {LABEL_RULE}, got {self.model_label!r}")
        check(0 < self.model_timeout_s <= 300, "MODEL_TIMEOUT_S must be in (0, 300]")
        check(0 <= self.model_retries <= 10, "MODEL_RETRIES must be 0-10")
        check(1 <= self.model_max_batch <= 1000, "GATEWAY_MODEL_MAX_BATCH must be 1-1000")
        check(1 <= self.model_concurrency <= 64, "GATEWAY_MODEL_CONCURRENCY must be 1-64")
        check(len(self.cassandra_hosts) > 0, "CASSANDRA_HOSTS must name at least one host")
        check(
            0 < self.cassandra_port < 65536, f"CASSANDRA_PORT must be a TCP port, got {self.cassandra_port}"
        )
        check(
            is_keyspace(self.cassandra_keyspace),
            f"CASSANDRA_KEYSPACE must be a lower-case letter then up to 47 lower-case letters, digits or _, "
            f"got {self.cassandra_keyspace!r}",
        )
        try:
            consistency_for(Replication.parse(self.cassandra_replication), self.cassandra_consistency)
        except ReplicationError as exc:
            raise SettingsError(f"CASSANDRA_REPLICATION/CASSANDRA_CONSISTENCY: {exc}") from None
        check(0 <= self.cassandra_ttl_days <= 3650, "CASSANDRA_TTL_DAYS must be 0-3650 (0: keep forever)")
        check(0 <= self.cassandra_write_linger_ms <= 1000, "CASSANDRA_WRITE_LINGER_MS must be 0-1000")
        check(
            bool(self.cassandra_username) == bool(self.cassandra_password),
            "set both CASSANDRA_USERNAME and CASSANDRA_PASSWORD, or neither",
        )
        check(0.1 <= self.rollout_refresh_s <= 300, "GATEWAY_ROLLOUT_REFRESH_S must be 0.1-300 (seconds)")
        check(1 <= self.shadow_queue <= 10_000, "GATEWAY_SHADOW_QUEUE must be 1-10000")
        check(self.log_level in LOG_LEVELS, f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
        check(
            all(" " <= c <= "~" for c in self.ops_token),
            "OPS_TOKEN must be printable ASCII (a header cannot carry anything else to match it)",
        )
        if self.env == "production":
            check(bool(self.ops_token), "OPS_TOKEN must be set when GATEWAY_ENV=production")
            check(
                len(self.ops_token) >= 16 and self.ops_token.lower() not in _WEAK_TOKENS,
                "OPS_TOKEN is too weak for production (use 16+ random characters: `openssl rand -hex 24`)",
            )
            check(
                bool(self.cassandra_username),
                "CASSANDRA_USERNAME and CASSANDRA_PASSWORD must be set when GATEWAY_ENV=production",
            )

    @property
    def cassandra_consistency_level(self) -> str:
        """CASSANDRA_CONSISTENCY, or the level derived from CASSANDRA_REPLICATION when it is empty."""
        return consistency_for(Replication.parse(self.cassandra_replication), self.cassandra_consistency)

    @property
    def ops_enabled(self) -> bool:
        return bool(self.ops_token)

    @property
    def model_server_target(self) -> str:
        """MODEL_SERVER_GRPC as the gRPC channel target (see model_server_target())."""
        return model_server_target(self.model_server_grpc)


def _is_rate_limit(value: str) -> bool:
    try:
        return bool(parse_many(value))
    except ValueError:
        return False


def is_keyspace(value: str) -> bool:
    return bool(_KEYSPACE_RE.fullmatch(value))


def _host_port(value: str) -> tuple[str, int] | None:
    host, sep, port = value.rpartition(":")
    if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
        return None
    return host, int(port)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host[1:-1] if host.startswith("[") and host.endswith("]") else host)
    except ValueError:
        return None


def model_server_target(value: str) -> str:
    """The gRPC target of MODEL_SERVER_GRPC: `host:port` and `dns:///name:port` as they are, a list of
    `ip:port` as gRPC's multi-address `ipv4:`/`ipv6:` target. Raises SettingsError when malformed."""
    rule = (
        "MODEL_SERVER_GRPC must be host:port, dns:///name:port or a comma-separated list of up to "
        f"{MAX_MODEL_SERVERS} ip:port (all IPv4 or all IPv6), got {value!r}"
    )
    if value.startswith(DNS_SCHEME):
        if _host_port(value[len(DNS_SCHEME) :]) is None or "," in value:
            raise SettingsError(rule)
        return value
    parts = [part.strip() for part in value.split(",")]
    addresses = [_host_port(part) for part in parts]
    if not parts or any(a is None or "/" in a[0] for a in addresses) or len(parts) > MAX_MODEL_SERVERS:
        raise SettingsError(rule)
    if len(parts) == 1:
        return parts[0]
    ips = [_ip(host) for host, _ in addresses]  # type: ignore[misc]
    versions = {ip.version if ip is not None else None for ip in ips}
    if versions not in ({4}, {6}) or len(set(parts)) != len(parts):
        raise SettingsError(rule + ": several addresses must be distinct IP literals (names: dns:///)")
    if versions == {4}:
        return "ipv4:" + ",".join(f"{ip}:{port}" for ip, (_, port) in zip(ips, addresses, strict=True))
    return "ipv6:" + ",".join(f"[{ip}]:{port}" for ip, (_, port) in zip(ips, addresses, strict=True))
