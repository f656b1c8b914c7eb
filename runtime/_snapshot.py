"""Read-model checkpoints: one file per checkpoint, a JSON header line then a JSON body.

Header: ``{"format": "soloist-snapshot", "version": 1, "domain": ..., "schema": ..., "position": ...,
"length": ..., "sha256": ...}``; ``schema`` is the version of the body's shape (for read models the
domain's ``read_models_version``, or the one a rebuild installed with new read-model code). A file whose
header, length or checksum does not match, whose schema differs from the one asked for, or whose position
is beyond the log's head, is skipped (and logged); the caller then replays from the log. Files are
written to a temporary name, fsynced and renamed, so a crash leaves either the old checkpoint or the new
one, never half of one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Final, final

import msgspec
import structlog

__all__ = ["Snapshot", "SnapshotStore"]

_FORMAT: Final = "soloist-snapshot"
_VERSION: Final = 1
_log = structlog.get_logger("soloist.snapshot")


class _Header(msgspec.Struct, frozen=True, kw_only=True):
    """The first line of a checkpoint file."""

    format: str
    version: int
    domain: str
    log_id: str
    schema: int
    position: Annotated[int, msgspec.Meta(ge=0)]
    length: int
    sha256: str


_decode_header: Final = msgspec.json.Decoder(_Header).decode


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    position: int
    body: bytes  # JSON; each replica decodes its own copy, so no two replicas share mutable state
    path: Path


@final
class SnapshotStore:
    """Checkpoints of one domain's read models in a directory; keeps the newest ``keep`` files."""

    def __init__(
        self, directory: str | os.PathLike[str], *, domain: str, log_id: str = "", schema: int = 1, keep: int = 2
    ) -> None:
        self.directory = Path(directory)
        self.log_id = log_id  # when set, checkpoints of another log file are rejected
        self._domain = domain
        self._schema = schema
        self._keep = keep

    def _files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob(f"{self._domain}-*.snapshot"), reverse=True)

    def write_bytes(self, position: int, body: bytes, *, schema: int | None = None) -> Path:
        """Write a serialised checkpoint atomically (blocking: call it from a worker thread).

        ``schema``: the version of ``body``'s shape (default: the store's).
        """
        header = _Header(
            format=_FORMAT,
            version=_VERSION,
            domain=self._domain,
            log_id=self.log_id,
            schema=self._schema if schema is None else schema,
            position=position,
            length=len(body),
            sha256=hashlib.sha256(body).hexdigest(),
        )
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{self._domain}-{position:020d}.snapshot"
        # a name of its own: two writers of the same position (the periodic checkpoint and the one at exit)
        # must not rename each other's file away
        fd, name = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=self.directory)
        tmp = Path(name)
        try:
            with open(fd, "wb") as f:
                f.write(msgspec.json.encode(header) + b"\n")
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        for old in self._files()[self._keep :]:
            old.unlink(missing_ok=True)
        return path

    def load(self, *, max_position: int, schema: int | None = None) -> Snapshot | None:
        """The newest valid checkpoint at or below ``max_position`` of version ``schema`` (blocking), or None."""
        schema = self._schema if schema is None else schema
        for path in self._files():
            try:
                snapshot = self._read(path, max_position, schema)
            except (OSError, ValueError) as exc:
                _log.warning("snapshot_rejected", path=str(path), reason=str(exc))
                continue
            return snapshot
        return None

    def _read(self, path: Path, max_position: int, schema: int) -> Snapshot:
        raw = path.read_bytes()
        newline = raw.find(b"\n")
        if newline < 0:
            raise ValueError("no header line")
        try:
            header = _decode_header(raw[:newline])
        except msgspec.MsgspecError as exc:
            raise ValueError(f"not a {_FORMAT} v{_VERSION} file: bad header ({exc})") from None
        if header.format != _FORMAT or header.version != _VERSION:
            raise ValueError(f"not a {_FORMAT} v{_VERSION} file")
        if header.domain != self._domain or header.schema != schema:
            raise ValueError(
                f"made for domain {header.domain!r} schema {header.schema}, need {self._domain!r} schema {schema} "
                "(another version of the code that made it: replayed from the log instead)"
            )
        if self.log_id and header.log_id != self.log_id:
            raise ValueError(f"made for log {header.log_id!r}, this log is {self.log_id!r}")
        body = raw[newline + 1 :]
        if len(body) != header.length:
            raise ValueError(f"body is {len(body)} bytes, header says {header.length} (truncated?)")
        if hashlib.sha256(body).hexdigest() != header.sha256:
            raise ValueError("checksum mismatch (corrupted)")
        position = header.position
        if position > max_position:
            raise ValueError(f"position {position} is beyond the log's head {max_position} (stale database?)")
        return Snapshot(position=position, body=body, path=path)
