"""LineStore: versioned line artifacts in Redis, where workers fetch them (DESIGN.md §5).

Keys (``<p>`` = prefix, ``<L>`` = line id, ``<n>`` = version):

- ``<p>line:<L>:seq``                  INCR -> next version; concurrent publishers never clash.
- ``<p>line:<L>:v:<n>:chunk:<i>``      artifact bytes, chunks of at most ``chunk_bytes``.
- ``<p>line:<L>:meta:<n>``             hash: sha256, size, chunks, created_at, metadata (JSON), ...
- ``<p>line:<L>:versions``             sorted set of visible versions (score = version).
- ``<p>line:<L>:current``              the active version.
- ``<p>line:<L>:history``              list of activations, newest first:
                                       JSON ``{"version", "at", "who", "action"}``.
- ``<p>line:<L>:late_policy``          the line's late policy override (an operations choice,
                                       never in the artifact); absent = the workers' setting.
- ``<p>lines``                         set of line ids.
- channel ``<p>events``                JSON ``{"line", "version", "action"}``, one per activation.

Invariants:

- A version is visible (meta + versions + lines, one MULTI/EXEC) only after all its chunks exist.
  Chunks are written with a TTL while pending and made persistent in that same MULTI/EXEC, so a
  publisher that dies half-way leaves nothing behind for long.
- The artifact is streamed from the file chunk by chunk (a WRN50 artifact is hundreds of MB): it
  is never held in memory whole, let alone twice.
- Activation = SET current + LPUSH history + PUBLISH event, one MULTI/EXEC. Every event means
  "``version`` is now the active version of ``line``"; ``action`` says why (``publish``,
  ``activate``, ``rollback``). Pub/sub may lose events; workers also poll ``current``.
- Rollback activates the version that was active before the current one: the newest history entry
  whose version differs from the current version. Rolling back twice therefore returns to where
  you started (like ``cd -``); to go further back, activate a version by number.
- Retention keeps the newest K versions and never deletes the current version or the one a
  rollback would activate. ``delete`` refuses the current version.
- Every read of artifact bytes checks the sha256 recorded at publish time.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, NoReturn, cast

import redis

from memkd_stream.contract.lateness import LatePolicy
from memkd_stream.contract.line_id import validate_line_id
from memkd_stream.errors import MemkdStreamError
from memkd_stream.lines.artifact_file import read_artifact_record, sidecar_sha256
from memkd_stream.lines.errors import (
    ChecksumMismatch,
    NoRollbackTarget,
    StoreUnavailable,
    UnknownLine,
    UnknownVersion,
    VersionActive,
)
from memkd_stream.log import redact_url

if TYPE_CHECKING:
    from memkd_stream.settings import RedisSettings

__all__ = ["LineStore"]

DEFAULT_CHUNK_BYTES = 8 * 1024 * 1024
# Pending chunks expire unless the publish that wrote them completes; a day is far longer than
# any upload, and short enough that a crashed publisher's bytes do not linger for good.
PENDING_CHUNK_TTL_S = 24 * 3600
# History is for operators and rollback; a few hundred activations is years of retraining.
HISTORY_MAX = 500
_WATCH_RETRIES = 20


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _versions(raw: Any) -> list[int]:
    """Version numbers from a ZRANGE reply (members are the versions' decimal strings)."""
    return [int(member) for member in raw]


def _text(value: bytes | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value.decode("utf-8")


def _late_policy(value: bytes | str | None) -> LatePolicy | None:
    """A stored override; a value no version of ours wrote counts as no override."""
    try:
        text = _text(value)
        return LatePolicy(text) if text is not None else None
    except (ValueError, UnicodeDecodeError):
        return None


class LineStore:
    """Versioned, chunked, checksummed line artifacts in Redis (see the module docstring).

    Args:
        client: a ``redis.Redis`` with ``decode_responses=False`` (artifact bytes are binary).
        prefix: prefix of every key and of the events channel.
        chunk_bytes: largest chunk written; Redis values above ~512 MB are refused outright and
            large values block the server while they move, so 8 MiB is the default.
        retention: how many of the newest versions of a line are kept (>= 1).
        location: where Redis is, for error messages (never with credentials).
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "memkd:",
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        retention: int = 5,
        *,
        location: str | None = None,
    ) -> None:
        if chunk_bytes < 1:
            raise ValueError("chunk_bytes must be >= 1")
        if retention < 1:
            raise ValueError("retention must be >= 1")
        self._r = client
        self._prefix = prefix
        self._chunk_bytes = chunk_bytes
        self._retention = retention
        self._location = location or self._describe(client)

    @classmethod
    def from_settings(cls, settings: RedisSettings) -> LineStore:
        """A store with the client, prefix, chunk size and retention of ``settings``."""
        return cls(
            settings.client(),
            prefix=settings.key_prefix,
            chunk_bytes=settings.chunk_bytes,
            retention=settings.retention_versions,
            location=redact_url(settings.url),
        )

    @staticmethod
    def _describe(client: redis.Redis) -> str:
        kw = client.connection_pool.connection_kwargs
        if kw.get("path"):
            return f"unix://{kw['path']}"
        scheme = "rediss" if kw.get("ssl") or "ssl_cert_reqs" in kw else "redis"
        return f"{scheme}://{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"

    # ---- key names -------------------------------------------------------------------------

    @property
    def events_channel(self) -> str:
        """The pub/sub channel that carries one JSON event per activation."""
        return f"{self._prefix}events"

    @property
    def client(self) -> redis.Redis:
        """The Redis client (the worker's hot swap subscribes to the events channel with it)."""
        return self._r

    @property
    def location(self) -> str:
        """Where this store's Redis is (no credentials), for messages."""
        return self._location

    def _k(self, line: str, *parts: object) -> str:
        return ":".join([f"{self._prefix}line", line, *map(str, parts)])

    def _chunk_key(self, line: str, version: int, index: int) -> str:
        return self._k(line, "v", version, "chunk", index)

    # ---- reads -----------------------------------------------------------------------------

    def lines(self) -> list[str]:
        """All line ids ever published, sorted."""
        with self._guard():
            return sorted(_text(m) or "" for m in self._r.smembers(f"{self._prefix}lines"))

    def current(self, line: str) -> int | None:
        """The active version, or None (unknown line, or nothing activated yet)."""
        validate_line_id(line)
        with self._guard():
            value = self._r.get(self._k(line, "current"))
        return int(value) if value is not None else None

    def versions(self, line: str) -> list[int]:
        """Published versions still stored, ascending. Raises UnknownLine."""
        validate_line_id(line)
        with self._guard():
            found = _versions(self._r.zrange(self._k(line, "versions"), 0, -1))
        if not found:
            self._require_line(line)
        return found

    def meta(self, line: str, version: int) -> dict[str, Any]:
        """What was recorded at publish time; ``metadata`` is the artifact's own record.

        Keys: line, version, sha256, size, chunks, chunk_bytes, created_at, published_by, source,
        metadata. Raises UnknownLine / UnknownVersion.
        """
        validate_line_id(line)
        with self._guard():
            raw = self._r.hgetall(self._k(line, "meta", int(version)))
        if not raw:
            self._raise_missing(line, version)
        fields = {_text(k): _text(v) for k, v in raw.items()}
        return {
            "line": line,
            "version": int(version),
            "sha256": fields["sha256"],
            "size": int(fields["size"] or 0),
            "chunks": int(fields["chunks"] or 0),
            "chunk_bytes": int(fields.get("chunk_bytes") or 0),
            "created_at": fields.get("created_at"),
            "published_by": fields.get("published_by"),
            "source": fields.get("source"),
            "metadata": json.loads(fields.get("metadata") or "{}"),
        }

    def history(self, line: str) -> list[dict[str, Any]]:
        """Activations, newest first: ``{"version", "at", "who", "action"}``. Raises UnknownLine."""
        validate_line_id(line)
        with self._guard():
            raw = self._r.lrange(self._k(line, "history"), 0, -1)
        if not raw:
            self._require_line(line)
        return [json.loads(entry) for entry in raw]

    def late_policy(self, line: str) -> LatePolicy | None:
        """The line's late policy override, or None (the workers' setting applies)."""
        validate_line_id(line)
        with self._guard():
            return _late_policy(self._r.get(self._k(line, "late_policy")))

    def late_policies(self, lines: Iterable[str]) -> dict[str, LatePolicy]:
        """The overrides of ``lines`` that have one, in one round trip (MGET)."""
        wanted = sorted(set(lines))
        if not wanted:
            return {}
        with self._guard():
            raw = self._r.mget([self._k(line, "late_policy") for line in wanted])
        found = {line: _late_policy(value) for line, value in zip(wanted, raw, strict=True)}
        return {line: policy for line, policy in found.items() if policy is not None}

    def fetch_artifact(self, line: str, version: int) -> bytes:
        """The artifact bytes of ``line@version``, sha256-verified (raises ChecksumMismatch)."""
        buffer = io.BytesIO()
        self.fetch_artifact_to(line, version, buffer)
        # BytesIO.getvalue() hands over its buffer without copying when nothing else views it.
        return buffer.getvalue()

    def fetch_artifact_to(self, line: str, version: int, fileobj: IO[bytes]) -> dict[str, Any]:
        """Stream the artifact into ``fileobj`` chunk by chunk, then verify its sha256.

        On ChecksumMismatch the bytes already written are not to be trusted: discard them.
        Returns the version's :meth:`meta`.
        """
        meta = self.meta(line, version)
        digest = hashlib.sha256()
        size = 0
        for index in range(meta["chunks"]):
            with self._guard():
                # a binary client (decode_responses=False): values come back as bytes
                chunk = cast(bytes | None, self._r.get(self._chunk_key(line, int(version), index)))
            if chunk is None:
                self.meta(line, version)  # deleted meanwhile -> UnknownVersion
                raise ChecksumMismatch(
                    f"{line}@{version}: chunk {index} of {meta['chunks']} is missing in Redis; "
                    "publish the line again",
                )
            digest.update(chunk)
            size += len(chunk)
            fileobj.write(chunk)
        if size != meta["size"] or digest.hexdigest() != meta["sha256"]:
            raise ChecksumMismatch(
                f"{line}@{version}: the bytes in Redis ({size} B, sha256 "
                f"{digest.hexdigest()[:12]}) "
                f"do not match the published artifact ({meta['size']} B, sha256 "
                f"{meta['sha256'][:12]}); publish the line again or activate another version",
            )
        return meta

    def download(self, line: str, version: int, path: Path) -> dict[str, Any]:
        """Write ``line@version`` to ``path`` (+ ``path.sha256``) atomically; returns its meta."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.part")
        try:
            with tmp.open("wb") as out:
                meta = self.fetch_artifact_to(line, version, out)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        path.with_name(path.name + ".sha256").write_text(f"{meta['sha256']}  {path.name}\n")
        return meta

    # ---- writes ----------------------------------------------------------------------------

    def publish(
        self, line: str, artifact_path: Path, *, activate: bool = True, who: str = "cli"
    ) -> int:
        """Upload the artifact file as the next version of ``line``; activate it unless told not.

        Returns the new version number. The file must be a memkd line artifact; when a
        ``<file>.sha256`` sits beside it, it must match the bytes read.
        """
        validate_line_id(line)
        path = Path(artifact_path)
        record = read_artifact_record(path)
        with self._guard():
            version = int(self._r.incr(self._k(line, "seq")))
        written = 0
        try:
            digest, size = hashlib.sha256(), 0
            with path.open("rb") as source:
                while chunk := source.read(self._chunk_bytes):
                    digest.update(chunk)
                    size += len(chunk)
                    with self._guard():
                        self._r.set(
                            self._chunk_key(line, version, written), chunk, ex=PENDING_CHUNK_TTL_S
                        )
                    written += 1
                    del chunk
            sha256 = digest.hexdigest()
            expected = sidecar_sha256(path)
            if expected is not None and expected != sha256:
                raise ChecksumMismatch(
                    f"{path} does not match its {path.name}.sha256 (file {sha256[:12]}, "
                    f"sidecar {expected[:12]}): the file is damaged; write it again",
                )
            meta: dict[Any, str | int] = {
                "sha256": sha256,
                "size": size,
                "chunks": written,
                "chunk_bytes": self._chunk_bytes,
                "created_at": _now_iso(),
                "published_by": who,
                "source": path.name,
                "metadata": json.dumps(record, separators=(",", ":"), sort_keys=True),
            }
            with self._guard():
                pipe = self._r.pipeline(transaction=True)
                for index in range(written):
                    pipe.persist(self._chunk_key(line, version, index))
                pipe.hset(self._k(line, "meta", version), mapping=meta)
                pipe.zadd(self._k(line, "versions"), {str(version): version})
                pipe.sadd(f"{self._prefix}lines", line)
                results = pipe.execute()
            if not all(results[:written]):  # a pending chunk expired: never serve a hole
                self._drop_version(line, version, written)
                raise ChecksumMismatch(
                    f"{line}@{version}: chunks expired before the upload completed; publish again",
                )
        except BaseException:
            self._forget_chunks(line, version, written)
            raise
        if activate:
            self.activate(line, version, who=who, action="publish")
        self.apply_retention(line)
        return version

    def activate(self, line: str, version: int, *, who: str, action: str = "activate") -> None:
        """Make ``version`` the active one: SET current + history + event in one MULTI/EXEC."""
        validate_line_id(line)
        version = int(version)
        meta_key = self._k(line, "meta", version)

        def txn(pipe: redis.client.Pipeline) -> None:
            if not pipe.exists(meta_key):
                pipe.reset()
                self._raise_missing(line, version)
            pipe.multi()
            self._queue_activation(pipe, line, version, who=who, action=action)

        self._transaction(txn, meta_key)

    def set_late_policy(self, line: str, policy: LatePolicy | None) -> None:
        """Set (or with None clear) the line's late policy override and tell the workers: the
        key and a ``late-policy`` event in one MULTI/EXEC. Raises UnknownLine."""
        validate_line_id(line)
        with self._guard():
            self._require_line(line)
            current = self._r.get(self._k(line, "current"))
            event = {
                "line": line,
                "version": int(current) if current is not None else None,
                "action": "late-policy",
            }
            pipe = self._r.pipeline(transaction=True)
            if policy is None:
                pipe.delete(self._k(line, "late_policy"))
            else:
                pipe.set(self._k(line, "late_policy"), LatePolicy(policy).value)
            pipe.publish(self.events_channel, json.dumps(event))
            pipe.execute()

    def rollback(self, line: str, *, who: str) -> int:
        """Activate the version that was active before the current one; returns it."""
        validate_line_id(line)
        current_key, history_key = self._k(line, "current"), self._k(line, "history")
        chosen: list[int] = []

        def txn(pipe: redis.client.Pipeline) -> None:
            target = self._rollback_target(pipe, line)
            if target is None:
                pipe.reset()
                self._require_line(line)
                raise NoRollbackTarget(
                    f"line {line} has no earlier activation to roll back to; "
                    "see `memkd-stream lines history " + line + "`",
                )
            target_meta = self._k(line, "meta", target)
            pipe.watch(target_meta)  # a concurrent delete of the target retries this
            if not pipe.exists(target_meta):
                pipe.reset()
                raise NoRollbackTarget(
                    f"line {line}: version {target}, active before the current one, was deleted; "
                    f"activate another with `memkd-stream lines activate {line} VERSION`",
                )
            chosen[:] = [target]
            pipe.multi()
            self._queue_activation(pipe, line, target, who=who, action="rollback")

        self._transaction(txn, current_key, history_key)
        return chosen[0]

    def delete(self, line: str, version: int) -> None:
        """Delete one version (meta, chunks, listing). Refuses the current version."""
        validate_line_id(line)
        version = int(version)
        current_key, meta_key = self._k(line, "current"), self._k(line, "meta", version)

        def txn(pipe: redis.client.Pipeline) -> None:
            raw_chunks = pipe.hget(meta_key, "chunks")
            if raw_chunks is None:
                pipe.reset()
                self._raise_missing(line, version)
            current = pipe.get(current_key)
            if current is not None and int(cast(bytes, current)) == version:
                pipe.reset()
                raise VersionActive(
                    f"{line}@{version} is the active version and workers serve it; activate or "
                    f"roll back to another version first",
                )
            pipe.multi()
            self._queue_drop(pipe, line, version, int(cast(bytes, raw_chunks)))

        self._transaction(txn, current_key, meta_key)

    def apply_retention(self, line: str) -> list[int]:
        """Delete all but the newest K versions, sparing current and the rollback target.

        Returns the versions deleted.
        """
        validate_line_id(line)
        current_key, history_key = self._k(line, "current"), self._k(line, "history")
        deleted: list[int] = []

        def txn(pipe: redis.client.Pipeline) -> None:
            stored = _versions(pipe.zrange(self._k(line, "versions"), 0, -1))
            keep = set(stored[-self._retention :])
            current = pipe.get(current_key)
            if current is not None:
                keep.add(int(current))
            target = self._rollback_target(pipe, line)
            if target is not None:
                keep.add(target)
            victims = [v for v in stored if v not in keep]
            chunk_counts = [pipe.hget(self._k(line, "meta", v), "chunks") for v in victims]
            pipe.multi()
            for victim, chunks in zip(victims, chunk_counts, strict=True):
                self._queue_drop(pipe, line, victim, int(chunks or 0))
            deleted[:] = victims

        self._transaction(txn, current_key, history_key, self._k(line, "versions"))
        return deleted

    # ---- internals -------------------------------------------------------------------------

    def _queue_activation(
        self, pipe: redis.client.Pipeline, line: str, version: int, *, who: str, action: str
    ) -> None:
        entry = {"version": version, "at": _now_iso(), "who": who, "action": action}
        event = {"line": line, "version": version, "action": action}
        pipe.set(self._k(line, "current"), version)
        pipe.lpush(self._k(line, "history"), json.dumps(entry))
        pipe.ltrim(self._k(line, "history"), 0, HISTORY_MAX - 1)
        pipe.publish(self.events_channel, json.dumps(event))

    def _queue_drop(
        self, pipe: redis.client.Pipeline, line: str, version: int, chunks: int
    ) -> None:
        # UNLINK frees big values off the main thread; DEL would block Redis on a WRN artifact.
        keys = [self._chunk_key(line, version, i) for i in range(chunks)]
        pipe.unlink(self._k(line, "meta", version), *keys)
        pipe.zrem(self._k(line, "versions"), str(version))

    def _rollback_target(self, pipe: redis.client.Pipeline, line: str) -> int | None:
        """The newest history entry whose version differs from current (immediate-mode read)."""
        current = pipe.get(self._k(line, "current"))
        if current is None:
            return None
        current_version = int(current)
        for raw in pipe.lrange(self._k(line, "history"), 0, -1):
            version = int(json.loads(raw)["version"])
            if version != current_version:
                return version
        return None

    def _transaction(self, body: Callable[[redis.client.Pipeline], None], *watch: str) -> None:
        """Run ``body`` under WATCH ``watch``; retry when a concurrent writer changed them."""
        with self._guard():
            for _ in range(_WATCH_RETRIES):
                with self._r.pipeline(transaction=True) as pipe:
                    try:
                        pipe.watch(*watch)
                        body(pipe)
                        pipe.execute()
                        return
                    except redis.WatchError:
                        continue
            raise StoreUnavailable(
                f"Redis at {self._location}: too many concurrent changes to the same line; retry",
            )

    def _drop_version(self, line: str, version: int, chunks: int) -> None:
        with self._guard():
            pipe = self._r.pipeline(transaction=True)
            self._queue_drop(pipe, line, version, chunks)
            pipe.execute()

    def _forget_chunks(self, line: str, version: int, written: int) -> None:
        """Best effort: remove a failed publish's chunks now (their TTL would anyway).

        Not when the version became visible after all (EXEC ran but its reply was lost).
        """
        if not written:
            return
        with contextlib.suppress(redis.RedisError):
            if not self._r.exists(self._k(line, "meta", version)):
                self._r.unlink(*(self._chunk_key(line, version, i) for i in range(written)))

    def _require_line(self, line: str) -> None:
        if not self._r.sismember(f"{self._prefix}lines", line):
            known = self.lines()
            hint = f"known lines: {', '.join(known)}" if known else "no lines are published yet"
            raise UnknownLine(f"line {line} is not known to Redis at {self._location} ({hint})")

    def _raise_missing(self, line: str, version: int) -> NoReturn:
        with self._guard():
            self._require_line(line)
            stored = _versions(self._r.zrange(self._k(line, "versions"), 0, -1))
        listed = ", ".join(map(str, stored)) or "none"
        raise UnknownVersion(f"line {line} has no version {version} (stored versions: {listed})")

    def _guard(self) -> _RedisGuard:
        return _RedisGuard(self._location, self._prefix)


class _RedisGuard:
    """Context manager turning redis-py connection/auth errors into StoreUnavailable."""

    __slots__ = ("_location", "_prefix")

    def __init__(self, location: str, prefix: str) -> None:
        self._location = location
        self._prefix = prefix

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> Literal[False]:
        if exc is None or isinstance(exc, MemkdStreamError):
            return False
        if isinstance(exc, redis.AuthenticationError):
            raise StoreUnavailable(
                f"Redis at {self._location} refused our credentials: {exc} "
                "(check MEMKD_REDIS__USERNAME / MEMKD_REDIS__PASSWORD)",
            ) from exc
        if isinstance(exc, redis.exceptions.NoPermissionError):
            raise StoreUnavailable(
                f"Redis at {self._location} refused a command by ACL: {exc} (the Redis user "
                f"needs keys ~{self._prefix}* and channels &{self._prefix}*)",
            ) from exc
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            raise StoreUnavailable(f"Redis at {self._location} is unreachable: {exc}") from exc
        if isinstance(exc, redis.ResponseError) and str(exc).startswith(("NOAUTH", "WRONGPASS")):
            raise StoreUnavailable(
                f"Redis at {self._location} requires other credentials: {exc}",
            ) from exc
        return False
