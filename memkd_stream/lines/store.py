"""LineStore: versioned line artifacts in Redis, where workers fetch them (DESIGN.md §5).

Keys (``<p>`` = prefix, ``<L>`` = line id, ``<n>`` = version):

- ``<p>line:<L>:seq``                  INCR -> next version; concurrent publishers never clash.
- ``<p>line:<L>:v:<n>:chunk:<i>``      artifact bytes, chunks of at most ``chunk_bytes``.
- ``<p>line:<L>:meta:<n>``             hash: sha256, size, chunks, created_at, metadata (JSON),
                                       parent (a delta's full parent version), ...
- ``<p>line:<L>:versions``             sorted set of visible versions (score = version).
- ``<p>line:<L>:current``              the active version.
- ``<p>line:<L>:shadow``               the version workers also score the line with, if any.
- ``<p>line:<L>:history``              list of activations, newest first:
                                       JSON ``{"version", "at", "who", "action", "reason"}``.
- ``<p>line:<L>:late_policy``          the line's late policy override (an operations choice,
                                       never in the artifact); absent = the workers' setting.
- ``<p>lines``                         set of line ids.
- channel ``<p>events``                JSON ``{"line", "version", "action"}``, one per activation
                                       and one per shadow change (``action`` "shadow").

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
- Retention keeps the newest K versions and never deletes the current version, the one a
  rollback would activate, the shadow, or the full parent of any version it keeps. ``delete``
  refuses the current version and a parent that a stored delta needs.
- A delta (``memkd.lineage``) is published only when its full parent is stored in the same line
  with the sha256 the delta names; its meta records the parent's version, which workers fetch
  and compose it with. Publishing WATCHes the parent's meta, so a concurrent delete of the
  parent cannot slip between the check and the version becoming visible.
- Activating the shadow version, or rolling back, ends shadowing (in the same MULTI/EXEC).
- Every history entry says why (``reason``: ``memkd_stream.lines.activation.ActivationReason``).
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
from memkd.lineage import ParentRef, input_differences, is_delta, parent_of

from memkd_stream.contract.lateness import LatePolicy
from memkd_stream.contract.line_id import validate_line_id
from memkd_stream.errors import MemkdStreamError
from memkd_stream.lines.activation import ActivationReason
from memkd_stream.lines.artifact_file import read_artifact_record, sidecar_sha256
from memkd_stream.lines.errors import (
    ActiveChanged,
    ArtifactRejected,
    ChecksumMismatch,
    NoRollbackTarget,
    ParentNeeded,
    ShadowRefused,
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


class _Any:
    """The type of ``ANY``: "whatever the active version is" (``activate(expect_current=)``)."""


ANY = _Any()


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
        parent (the full version a delta applies to, else None), metadata, notes (what the
        publisher added: the activation gate's figures). Raises UnknownLine / UnknownVersion.
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
            "parent": int(parent) if (parent := fields.get("parent")) else None,
            "metadata": json.loads(fields.get("metadata") or "{}"),
            "notes": json.loads(fields.get("notes") or "{}"),
        }

    def shadow(self, line: str) -> int | None:
        """The version workers also score ``line`` with (``set_shadow``), or None."""
        validate_line_id(line)
        with self._guard():
            value = self._r.get(self._k(line, "shadow"))
        return int(value) if value is not None else None

    def history(self, line: str) -> list[dict[str, Any]]:
        """Activations, newest first: ``{"version", "at", "who", "action", "reason"}`` (entries
        written before reasons were recorded have none). Raises UnknownLine."""
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
        self,
        line: str,
        artifact_path: Path,
        *,
        activate: bool = True,
        who: str = "cli",
        reason: ActivationReason = ActivationReason.OPERATOR,
        notes: dict[str, Any] | None = None,
    ) -> int:
        """Upload the artifact file as the next version of ``line``; activate it unless told not.

        Returns the new version number. The file must be a memkd line artifact; when a
        ``<file>.sha256`` sits beside it, it must match the bytes read. A delta's full parent
        must be stored in this line (``ArtifactRejected`` otherwise). ``reason`` goes into the
        history when it activates; ``notes`` (JSON) is kept in the meta (the gate's figures).
        """
        validate_line_id(line)
        path = Path(artifact_path)
        record = read_artifact_record(path)
        parent = self._parent_version(line, record, path)
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
            if parent is not None:
                meta["parent"] = parent
            if notes:
                meta["notes"] = json.dumps(notes, separators=(",", ":"), sort_keys=True)
            results = self._make_visible(line, version, written, meta, parent)
            if not all(results[:written]):  # a pending chunk expired: never serve a hole
                self._drop_version(line, version, written)
                raise ChecksumMismatch(
                    f"{line}@{version}: chunks expired before the upload completed; publish again",
                )
        except BaseException:
            self._forget_chunks(line, version, written)
            raise
        if activate:
            self.activate(line, version, who=who, action="publish", reason=reason)
        self.apply_retention(line)
        return version

    def activate(
        self,
        line: str,
        version: int,
        *,
        who: str,
        action: str = "activate",
        reason: ActivationReason = ActivationReason.OPERATOR,
        expect_current: int | _Any | None = ANY,
    ) -> None:
        """Make ``version`` the active one: SET current + history + event in one MULTI/EXEC
        (ending shadowing when ``version`` was the shadow).

        ``expect_current``: activate only if this is still the active version (None: none is);
        otherwise ``ActiveChanged`` (a gate compared against a version no longer active).
        """
        validate_line_id(line)
        version = int(version)
        meta_key, shadow_key = self._k(line, "meta", version), self._k(line, "shadow")
        current_key = self._k(line, "current")

        def txn(pipe: redis.client.Pipeline) -> None:
            if not pipe.exists(meta_key):
                pipe.reset()
                self._raise_missing(line, version)
            if expect_current is not ANY:
                raw = pipe.get(current_key)
                current = int(cast(bytes, raw)) if raw is not None else None
                if current != expect_current:
                    pipe.reset()
                    raise ActiveChanged(
                        f"line {line}: the active version is now {current}, not "
                        f"{expect_current} as when {line}@{version} was compared with it; "
                        f"compare again, or `memkd-stream lines activate {line} {version}`"
                    )
            shadow = pipe.get(shadow_key)
            pipe.multi()
            if shadow is not None and int(cast(bytes, shadow)) == version:
                pipe.delete(shadow_key)
            self._queue_activation(pipe, line, version, who=who, action=action, reason=reason)

        self._transaction(txn, meta_key, shadow_key, current_key)

    def annotate(self, line: str, version: int, notes: dict[str, Any]) -> None:
        """Merge ``notes`` (JSON) into what ``meta`` reports for ``line@version``."""
        validate_line_id(line)
        meta_key = self._k(line, "meta", int(version))

        def txn(pipe: redis.client.Pipeline) -> None:
            raw = pipe.hget(meta_key, "notes")
            if raw is None and not pipe.exists(meta_key):
                pipe.reset()
                self._raise_missing(line, version)
            merged = {**json.loads(cast(bytes, raw) or b"{}"), **notes}
            pipe.multi()
            pipe.hset(meta_key, "notes", json.dumps(merged, separators=(",", ":"), sort_keys=True))

        self._transaction(txn, meta_key)

    def set_shadow(self, line: str, version: int | None) -> None:
        """Make workers also score ``line`` with ``version`` (None: stop), and tell them.

        Refused (``ShadowRefused``) for the active version and for one that cannot share the
        active one's teacher features (backbone, input size, normalisation, region of
        interest: ``memkd.lineage.input_differences``).
        """
        validate_line_id(line)
        current_key, shadow_key = self._k(line, "current"), self._k(line, "shadow")
        meta_key = self._k(line, "meta", int(version)) if version is not None else None

        def txn(pipe: redis.client.Pipeline) -> None:
            if version is not None:
                self._check_shadow(pipe, line, int(version))
            pipe.multi()
            if version is None:
                pipe.delete(shadow_key)
            else:
                pipe.set(shadow_key, int(version))
            event = {"line": line, "version": version, "action": "shadow"}
            pipe.publish(self.events_channel, json.dumps(event))

        self._transaction(txn, current_key, shadow_key, *([meta_key] if meta_key else []))

    def _check_shadow(self, pipe: redis.client.Pipeline, line: str, version: int) -> None:
        """(inside a WATCH) Refuse a shadow that is missing, active or of another input."""
        raw_current = pipe.get(self._k(line, "current"))
        if raw_current is None:
            pipe.reset()
            self._require_line(line)
            raise ShadowRefused(f"line {line} has no active version to shadow")
        current = int(cast(bytes, raw_current))
        if current == version:
            pipe.reset()
            raise ShadowRefused(f"{line}@{version} is the active version; it cannot shadow itself")
        shadow_meta = pipe.hget(self._k(line, "meta", version), "metadata")
        if shadow_meta is None:
            pipe.reset()
            self._raise_missing(line, version)
        active_meta = pipe.hget(self._k(line, "meta", current), "metadata")
        differences = input_differences(
            json.loads(cast(bytes, active_meta) or b"{}"), json.loads(cast(bytes, shadow_meta))
        )
        if differences:
            pipe.reset()
            raise ShadowRefused(
                f"{line}@{version} cannot shadow {line}@{current}: it does not share the active "
                f"version's input ({'; '.join(differences)}), so the teacher's features could "
                "not be shared"
            )

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
            pipe.delete(self._k(line, "shadow"))  # a rollback ends any trial
            self._queue_activation(
                pipe, line, target, who=who, action="rollback", reason=ActivationReason.ROLLBACK
            )

        self._transaction(txn, current_key, history_key)
        return chosen[0]

    def delete(self, line: str, version: int) -> None:
        """Delete one version (meta, chunks, listing). Refuses the current version and the
        parent of any stored delta (``ParentNeeded``)."""
        validate_line_id(line)
        version = int(version)
        current_key, meta_key = self._k(line, "current"), self._k(line, "meta", version)
        versions_key = self._k(line, "versions")

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
            stored = _versions(pipe.zrange(versions_key, 0, -1))
            children = [v for v, parent in self._parents(pipe, line, stored) if parent == version]
            if children:
                pipe.reset()
                named = ", ".join(f"{line}@{v}" for v in children)
                raise ParentNeeded(
                    f"{line}@{version} is the full parent of {named} (deltas that workers "
                    f"compose with it); delete those first"
                )
            pipe.multi()
            self._queue_drop(pipe, line, version, int(cast(bytes, raw_chunks)))

        self._transaction(txn, current_key, meta_key, versions_key)

    def apply_retention(self, line: str) -> list[int]:
        """Delete all but the newest K versions, sparing current, the rollback target, the
        shadow, and the full parent of every version kept.

        Returns the versions deleted.
        """
        validate_line_id(line)
        current_key, history_key = self._k(line, "current"), self._k(line, "history")
        shadow_key = self._k(line, "shadow")
        deleted: list[int] = []

        def txn(pipe: redis.client.Pipeline) -> None:
            stored = _versions(pipe.zrange(self._k(line, "versions"), 0, -1))
            keep = set(stored[-self._retention :])
            for key in (current_key, shadow_key):
                value = pipe.get(key)
                if value is not None:
                    keep.add(int(cast(bytes, value)))
            target = self._rollback_target(pipe, line)
            if target is not None:
                keep.add(target)
            for _, parent in self._parents(pipe, line, sorted(keep & set(stored))):
                if parent is not None:
                    keep.add(parent)  # a kept delta needs its full parent
            victims = [v for v in stored if v not in keep]
            chunk_counts = [pipe.hget(self._k(line, "meta", v), "chunks") for v in victims]
            pipe.multi()
            for victim, chunks in zip(victims, chunk_counts, strict=True):
                self._queue_drop(pipe, line, victim, int(chunks or 0))
            deleted[:] = victims

        self._transaction(txn, current_key, history_key, shadow_key, self._k(line, "versions"))
        return deleted

    # ---- internals -------------------------------------------------------------------------

    def _queue_activation(
        self,
        pipe: redis.client.Pipeline,
        line: str,
        version: int,
        *,
        who: str,
        action: str,
        reason: ActivationReason,
    ) -> None:
        entry = {
            "version": version,
            "at": _now_iso(),
            "who": who,
            "action": action,
            "reason": str(reason),
        }
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

    def _parents(
        self, pipe: redis.client.Pipeline, line: str, versions: list[int]
    ) -> list[tuple[int, int | None]]:
        """(version, its full parent or None) for ``versions`` (immediate-mode reads)."""
        out: list[tuple[int, int | None]] = []
        for v in versions:
            raw = pipe.hget(self._k(line, "meta", v), "parent")
            out.append((v, int(cast(bytes, raw)) if raw else None))
        return out

    def _parent_version(self, line: str, record: dict[str, Any], path: Path) -> int | None:
        """The stored full version a delta applies to (None for a full artifact): the version
        it names when the sha256 matches, else the newest full version with that sha256 (a
        delta made offline, or its parent published again)."""
        if not is_delta(record):
            return None
        try:
            ref = parent_of(record)
        except ValueError as exc:
            raise ArtifactRejected(f"{path}: {exc}") from None
        assert ref is not None
        stored = self.versions(line) if self._exists_line(line) else []
        order = sorted(stored, reverse=True)
        if ref.version in stored and ref.line in (None, line):
            order.remove(ref.version)
            order.insert(0, ref.version)
        for version in order:
            meta = self.meta(line, version)
            if meta["sha256"] == ref.sha256 and not is_delta(meta["metadata"]):
                return version
        raise ArtifactRejected(_missing_parent(line, ref, path))

    def _exists_line(self, line: str) -> bool:
        with self._guard():
            return bool(self._r.sismember(f"{self._prefix}lines", line))

    def _make_visible(
        self, line: str, version: int, written: int, meta: dict[Any, str | int], parent: int | None
    ) -> list[Any]:
        """Persist the chunks and publish the meta, listing and line in one MULTI/EXEC, under
        WATCH of the parent's meta (a parent deleted meanwhile refuses the delta)."""
        parent_key = self._k(line, "meta", parent) if parent is not None else None

        def txn(pipe: redis.client.Pipeline) -> None:
            if parent_key is not None and not pipe.exists(parent_key):
                pipe.reset()
                raise ArtifactRejected(
                    f"{line}@{parent}, the full parent of this delta, was deleted while it was "
                    "being published; publish the parent again first"
                )
            pipe.multi()
            for index in range(written):
                pipe.persist(self._chunk_key(line, version, index))
            pipe.hset(self._k(line, "meta", version), mapping=meta)
            pipe.zadd(self._k(line, "versions"), {str(version): version})
            pipe.sadd(f"{self._prefix}lines", line)

        return self._transaction(txn, *([parent_key] if parent_key else []))

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

    def _transaction(self, body: Callable[[redis.client.Pipeline], None], *watch: str) -> list[Any]:
        """Run ``body`` under WATCH ``watch``; retry when a concurrent writer changed them.
        Returns the EXEC replies."""
        with self._guard():
            for _ in range(_WATCH_RETRIES):
                with self._r.pipeline(transaction=True) as pipe:
                    try:
                        if watch:
                            pipe.watch(*watch)
                        body(pipe)
                        return list(pipe.execute())
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


def _missing_parent(line: str, ref: ParentRef, path: Path) -> str:
    named = f"version {ref.version} of line {ref.line or line}, " if ref.version else ""
    return (
        f"{path} is a delta of the full artifact with sha256 {ref.sha256[:12]}… ({named}not "
        f"stored in line {line}); workers could not compose it. Publish the parent to line "
        f"{line} first, or publish a full artifact"
    )


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
