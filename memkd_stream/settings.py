"""Settings of the worker and the CLI (DESIGN.md §6): environment first, then a TOML file.

One frozen pydantic-settings tree. Environment variables use the prefix ``MEMKD_`` and ``__`` to
nest (``MEMKD_KAFKA__BOOTSTRAP_SERVERS``, ``MEMKD_WORKER__MAX_BATCH``); a TOML file given with
``--config`` has one table per group (``[kafka]``, ``[worker]``...). Environment wins over the
file, the file over the defaults. Empty environment values count as unset, so a Kubernetes Secret
may keep every key with "" for the unused ones.

Secrets (SASL/SSL passwords, the Redis password) are ``SecretStr``: they print as ``**********``
in reprs and logs; credentials inside the Redis URL are masked in reprs too.

A wrong value raises :class:`SettingsError` whose message is one line naming the environment
variable, e.g. ``MEMKD_WORKER__MAX_BATCH: Input should be a valid integer, got 'abc'``.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from memkd_stream.contract.lateness import LatePolicy
from memkd_stream.contract.line_id import LINE_ID_RE
from memkd_stream.errors import ErrorCode, MemkdStreamError
from memkd_stream.log import redact_url, register_secret

if TYPE_CHECKING:
    import redis
    from redis.retry import Retry

__all__ = [
    "ENV_PREFIX",
    "GateSettings",
    "KafkaSettings",
    "LogSettings",
    "MetricsSettings",
    "ModelSettings",
    "RedisSettings",
    "Settings",
    "SettingsError",
    "WorkerSettings",
    "env_name",
    "load_settings",
]

ENV_PREFIX = "MEMKD_"
ENV_DELIMITER = "__"
MiB = 1024 * 1024
GiB = 1024 * MiB

_SECRET_FIELDS = frozenset({"sasl_password", "ssl_password", "password"})
_DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Longest pause between two attempts of a Redis call that lost its connection.
_REDIS_BACKOFF_CAP_S = 2.0

# The TOML file of the current load_settings() call (pydantic-settings asks for sources per class,
# not per call; a context variable keeps concurrent loads independent).
_config_file: ContextVar[Path | None] = ContextVar("memkd_config_file", default=None)


class SettingsError(MemkdStreamError, ValueError):
    """A setting is missing, malformed or out of range; the message names the variable."""

    code: str = ErrorCode.SETTINGS_INVALID


class _Group(BaseModel):
    """Base of the settings groups: frozen, and unknown keys are typos, not silence."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Group):
    """Broker connection, topic names and the limits that follow from camera images."""

    bootstrap_servers: str = "127.0.0.1:39092"
    inspect_topic: str = "memkd.inspect"
    results_topic: str = "memkd.results"
    dlq_topic: str = "memkd.inspect.dlq"
    group_id: str = "memkd-workers"
    client_id: str = "memkd"
    partitions: int = Field(6, ge=1)
    replication_factor: int = Field(1, ge=1)
    max_message_bytes: int = Field(16 * MiB, ge=1024)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = None
    # Compression of the results and dead letters the worker produces (any codec is read on the
    # inspect topic). Masks are PNG already: lz4/snappy save nothing, zstd/gzip ~25 %
    # (bench/result_compression.py), and every downstream consumer then needs the codec.
    compression_type: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"
    request_timeout_ms: int = Field(30000, ge=1000)
    # What the consumers read of transactional producers (exactly-once camera gateways, Kafka
    # Streams): read_committed skips aborted transactions (a retracted image, often sent again in
    # the next transaction, would otherwise be scored twice) and waits for an open transaction to
    # end. Records of producers without transactions read the same either way.
    isolation_level: Literal["read_committed", "read_uncommitted"] = "read_committed"
    # Broker down longer than this -> the worker exits non-zero so that Kubernetes restarts it.
    unreachable_timeout_s: float = Field(60.0, gt=0)
    # Offset commits refused this long while results are owed (a consumer stuck in a rebalance
    # that never completes) -> the worker exits 3 so that a restart rejoins the group, rather
    # than scoring on with nothing committed. Longer than any rebalance that completes: the
    # broker ends one after the members' max.poll.interval.ms (300 s by default).
    commit_stall_timeout_s: float = Field(360.0, gt=0)
    # A worker that stops heartbeating (kill -9, a lost node) hands its partitions over after
    # this long: the parts on a line pass uninspected meanwhile. The broker's
    # group.min.session.timeout.ms (default 6000) is the floor.
    session_timeout_ms: int = Field(6000, ge=1000)
    heartbeat_interval_ms: int = Field(2000, ge=100)
    # Static group membership (KIP-345), off by default: a restart within the session timeout
    # keeps the partitions without a rebalance, but a static member never leaves the group, so
    # a scale-down or a rollout to new pod names idles its partitions for a session timeout.
    group_instance_id: str | None = None
    # Longest wait between reconnect attempts: a broker that is back is noticed this fast.
    reconnect_backoff_max_ms: int = Field(1000, ge=50)

    @model_validator(mode="after")
    def _heartbeat_within_session(self) -> KafkaSettings:
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError(
                "heartbeat_interval_ms must be at most a third of session_timeout_ms "
                f"(got {self.heartbeat_interval_ms} and {self.session_timeout_ms})"
            )
        return self

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL_"):
            if not self.sasl_mechanism:
                raise ValueError(
                    f"sasl_mechanism is required with security_protocol {self.security_protocol}"
                )
            needs_login = (
                self.sasl_mechanism.upper() == "PLAIN"
                or self.sasl_mechanism.upper().startswith("SCRAM-")
            )
            if needs_login and (self.sasl_username is None or self.sasl_password is None):
                raise ValueError(
                    f"sasl_username and sasl_password are required with {self.sasl_mechanism}"
                )
        return self

    @field_validator("ssl_cafile", "ssl_certfile", "ssl_keyfile")
    @classmethod
    def _tls_file_exists(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        """A missing CA or key file is a settings error now, not a failure at the first
        connect (checked only where TLS is used: the file is read only then)."""
        uses_tls = info.data.get("security_protocol") in ("SSL", "SASL_SSL")
        if path is None or not uses_tls:
            return path
        if not path.is_file():
            raise ValueError(f"{path} does not exist or is not a file")
        if info.field_name == "ssl_cafile":
            try:
                ssl.create_default_context(cafile=str(path))
            except (ssl.SSLError, OSError) as exc:
                raise ValueError(f"{path} is not a readable PEM CA file ({exc})") from None
        return path

    def client_kwargs(self) -> dict[str, Any]:
        """Bootstrap, client id, timeout and security kwargs common to kafka-python clients."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "request_timeout_ms": self.request_timeout_ms,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol.startswith("SASL_"):
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            if self.sasl_username is not None:
                kwargs["sasl_plain_username"] = self.sasl_username
            if self.sasl_password is not None:
                kwargs["sasl_plain_password"] = self.sasl_password.get_secret_value()
        if self.security_protocol in ("SSL", "SASL_SSL"):
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                value = getattr(self, name)
                if value is not None:
                    kwargs[name] = str(value)
            if self.ssl_password is not None:
                kwargs["ssl_password"] = self.ssl_password.get_secret_value()
        return kwargs


class RedisSettings(_Group):
    """Where line models live (DESIGN.md §5) and how long to wait for Redis."""

    url: str = "redis://127.0.0.1:36379/0"
    username: str | None = None
    password: SecretStr | None = None
    tls: bool = False
    ssl_ca_certs: Path | None = None
    key_prefix: str = "memkd:"
    chunk_bytes: int = Field(8 * MiB, ge=1024, le=512 * MiB)
    retention_versions: int = Field(5, ge=2)
    # One Redis round trip (or connect) longer than this has failed.
    socket_timeout_s: float = Field(5.0, gt=0)
    # How long a Redis call keeps retrying a lost connection (backing off) before it fails:
    # `fit` rides out a Redis restart while it publishes; the worker retries on its loader
    # thread, so lines it holds never wait on Redis.
    unreachable_timeout_s: float = Field(30.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name == "url" else value

    def retry(self) -> Retry:
        """Retries of a lost connection that fit ``unreachable_timeout_s``: each attempt may
        take a socket timeout, each backoff at most ``_REDIS_BACKOFF_CAP_S``."""
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        per_attempt = self.socket_timeout_s + _REDIS_BACKOFF_CAP_S
        retries = max(0, int(self.unreachable_timeout_s / per_attempt))
        return Retry(ExponentialBackoff(cap=_REDIS_BACKOFF_CAP_S, base=0.1), retries)

    def client(self) -> redis.Redis:
        """A binary-safe redis-py client (``decode_responses=False``: artifacts are bytes)."""
        import redis

        url = self.url
        if self.tls and url.startswith("redis://"):
            url = "rediss://" + url.removeprefix("redis://")
        kwargs: dict[str, Any] = {
            "socket_timeout": self.socket_timeout_s,
            "socket_connect_timeout": self.socket_timeout_s,
            "health_check_interval": 30,
            "retry": self.retry(),
            "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
        }
        if self.username is not None:
            kwargs["username"] = self.username
        if self.password is not None:
            kwargs["password"] = self.password.get_secret_value()
        if url.startswith("rediss://") and self.ssl_ca_certs is not None:
            kwargs["ssl_ca_certs"] = str(self.ssl_ca_certs)
        return redis.Redis.from_url(url, **kwargs)


class ModelSettings(_Group):
    """Which teacher and where its weights are; which device scores, at which precision.

    ``precision`` is the compute precision of fit, eval and the worker (``memkd.precision``;
    auto = bf16 on CUDA GPUs and CPUs that do bf16 natively, else fp32; fp16 on CUDA only),
    not the artifact's storage dtype (``fit --dtype``). Whether it can run is known only once the
    device is resolved, so fp16 on a CPU is refused when fit, eval or the worker start.
    """

    backbone: str = "tf_efficientnet_lite2"  # = memkd.config.ModelConfig's default (a test says so)
    wrn50_weights: Path | None = None  # torchvision wide_resnet50_2 V1 ImageNet weights file
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # = memkd.precision.Precision

    @field_validator("device")
    @classmethod
    def _device_name(cls, value: str) -> str:
        if not _DEVICE_RE.fullmatch(value):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return value


class WorkerSettings(_Group):
    """Micro-batching, decoding, the line-model cache and the time budgets of the worker."""

    # Model inputs per forward and records in flight; a tiled line's frame counts its tiles.
    max_batch: int = Field(16, ge=1)
    max_wait_ms: float = Field(20, ge=0)
    decode_threads: int = Field(2, ge=1)
    queue_max_records: int = Field(256, ge=1)
    max_image_pixels: int = Field(50_000_000, ge=1)
    # Lines whose active model is loaded at start; empty = every line in Redis.
    # From the environment: "A,press-3" or a JSON list.
    preload_lines: Annotated[list[str], NoDecode] = Field(default_factory=list)
    cache_max_models: int = Field(16, ge=1)
    cache_max_bytes: int = Field(2 * GiB, ge=1)
    line_unavailable_pause_s: float = Field(30, ge=0)
    # How long "this line does not exist" is believed before the set of lines is read again
    # (an activation event makes a new line known at once).
    unknown_line_ttl_s: float = Field(10, gt=0)
    refresh_interval_s: float = Field(30, gt=0)
    drain_grace_s: float = Field(25, gt=0)
    rebalance_budget_s: float = Field(10, gt=0)
    # A worker thread (consumer, decode, inference, publisher, hot swap) that makes no progress
    # for this long fails /healthz, and Kubernetes restarts the pod.
    stuck_after_s: float = Field(60, gt=0)
    # Late images (DESIGN.md §3): an image older than max_age_ms (unset: never late) plus the
    # clock-skew margin when it would be scored is scored with late_ms in its result, or
    # dead-lettered `stale`, as the line's late policy says (this one, or the line's override
    # in Redis: `memkd-stream lines late-policy`).
    max_age_ms: int | None = Field(None, ge=1)
    clock_skew_ms: int = Field(1000, ge=0)
    late_policy: LatePolicy = LatePolicy.SCORE
    worker_id: str = Field(default_factory=socket.gethostname, min_length=1)

    @field_validator("preload_lines", mode="before")
    @classmethod
    def _split_lines(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("preload_lines")
    @classmethod
    def _valid_line_ids(cls, value: list[str]) -> list[str]:
        bad = [line for line in value if not LINE_ID_RE.fullmatch(line)]
        if bad:
            raise ValueError(f"not valid line ids: {bad}")
        return value


class GateSettings(_Group):
    """The activation gate of ``fit``, ``lines publish`` and ``lines threshold`` (DESIGN.md §5):
    a new version is activated only if it is not worse than the active one by more than
    ``margin`` (AUROC, balanced accuracy or false-alarm rate, all in 0..1) on images neither
    trained on. Without a labelled test split or --gate-data, ``holdout_fraction`` of the new good
    images (at least ``min_images``) is held back from training to compare on."""

    margin: float = Field(0.02, ge=0, lt=1)
    holdout_fraction: float = Field(0.15, gt=0, lt=1)
    min_images: int = Field(4, ge=1)


class MetricsSettings(_Group):
    """Prometheus metrics and the /healthz and /readyz probes share this listener."""

    port: int = Field(9400, ge=0, le=65535)
    host: str = "0.0.0.0"


class LogSettings(_Group):
    """Log level and rendering: ``auto`` = console lines on a terminal, JSON lines otherwise."""

    level: str = "INFO"
    format: Literal["auto", "json", "console"] = "auto"

    @field_validator("level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in _LEVELS:
            raise ValueError(f"must be one of {', '.join(_LEVELS)}")
        return level


class Settings(BaseSettings):
    """Everything the worker and the CLI can be told; build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        env_ignore_empty=True,
        case_sensitive=False,
        frozen=True,
        extra="ignore",  # other MEMKD_* variables (tools, tests) are not ours to judge
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    gate: GateSettings = Field(default_factory=GateSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    log: LogSettings = Field(default_factory=LogSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = _config_file.get()
        if config_file is None:
            return (init_settings, env_settings)
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, config_file))


def env_name(loc: tuple[int | str, ...]) -> str:
    """The environment variable of a field location: ``("worker", "max_batch")`` ->
    ``MEMKD_WORKER__MAX_BATCH`` (list indexes are dropped)."""
    parts = [str(part).upper() for part in loc if isinstance(part, str)]
    return ENV_PREFIX + ENV_DELIMITER.join(parts)


def _describe(exc: ValidationError, config_file: Path | None) -> str:
    """All problems of one load, on one line, each naming its variable."""
    problems = []
    for error in exc.errors(include_url=False):
        loc = tuple(part for part in error["loc"] if not str(part).startswith("function-"))
        name = env_name(loc)
        if config_file is not None:
            dotted = ".".join(str(part) for part in loc if isinstance(part, str))
            name += f" (or {dotted} in {config_file})"
        text = f"{name}: {error['msg']}"
        secret = any(str(part) in _SECRET_FIELDS for part in loc)
        value = error.get("input")
        if (
            not secret
            and isinstance(value, str | int | float | bool)
            and error["type"] != "missing"
        ):
            text += f", got {value!r}"
        problems.append(text)
    return "; ".join(problems).replace("\n", " ")


def load_settings(config_file: Path | None = None) -> Settings:
    """Read the settings from the environment and, when given, a TOML file (env wins).

    Raises:
        SettingsError: a value is wrong, or the file is missing or not TOML (one-line message).
    """
    if config_file is not None:
        config_file = Path(config_file)
        if not config_file.is_file():
            raise SettingsError(f"--config {config_file}: no such file")
        try:
            with config_file.open("rb") as fh:
                tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"--config {config_file}: not valid TOML: {exc}") from None
    token = _config_file.set(config_file)
    try:
        settings = Settings()
    except ValidationError as exc:
        raise SettingsError(_describe(exc, config_file)) from None
    finally:
        _config_file.reset(token)
    _register_secrets(settings)
    return settings


def _register_secrets(settings: Settings) -> None:
    """Have logging mask every password these settings hold, wherever a library prints it."""
    for secret in (
        settings.kafka.sasl_password,
        settings.kafka.ssl_password,
        settings.redis.password,
    ):
        if secret is not None:
            register_secret(secret.get_secret_value())
    register_secret(urlsplit(settings.redis.url).password)
