"""The store's one writer: a child process applying operations with group commit.

Theory of operation. The gateway (writer.py) sends frames of operations
(wire.py) to this process's stdin. The loop here blocks for the first
frame, then takes every frame that arrived meanwhile (up to ``MAX_MERGE``:
writes that came in while the last commit ran), and runs all their
operations in ONE LMDB write transaction, each in a nested transaction of
its own: an operation that raises is rolled back alone and answers with its
error, the others go on. Then one commit, one fsync, and only then a reply
per frame, in order. So a caller hears of its write only once it is on
disk, and one fsync serves everything that queued up behind the last one.
A failed commit (disk full, map full, an I/O error) fails every operation
of it, with DiskFull, MapFull or StoreIOFailed (errors.py) so that the
gateway can name the cause.

Why a process: the operations' Python (record encoding, queue bookkeeping)
runs off the gateway's GIL and core, so the event loop never stalls behind
it. It imports the operations, records and keys, never the store facade.
It exits at EOF on stdin, so it never outlives the gateway; a signal to the
process group (Ctrl-C, a service manager's SIGTERM) is ignored, so what the
gateway sends before it exits is still committed.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import signal
import sys

import lmdb

from ..errors import DiskFull, MapFull, StoreIOFailed
from . import ops, wire
from .kv import LmdbKV, open_env, reserve_check

log = logging.getLogger("edgistry.gateway.store")

MAX_MERGE = 64  # frames one transaction may take (they arrived while the last one committed)


def commit_group(env: lmdb.Environment, retention_ms: int, messages: list[list]) -> list[list]:
    """Run every message's operations in one transaction (nested per
    operation); return their outcomes per message (wire.py's form)."""
    outcomes: list[list] = [[] for _ in messages]
    map_size = env.info()["map_size"]
    try:
        with env.begin(write=True) as txn:
            for batch, out in zip(messages, outcomes):
                for op in batch:
                    try:
                        name, args = op
                        with env.begin(write=True, parent=txn) as nested:
                            ctx = ops.Ctx(LmdbKV(nested), retention_ms, reserve_check(map_size, nested))
                            result, changed = ops.apply(ctx, name, args)
                        out.append([True, [result, changed]])
                    except lmdb.MapFullError as exc:
                        # this operation alone did not fit (its nested transaction is rolled back
                        # and the group's stays usable): the others in the group still commit
                        out.append([False, storage_fault(exc, env) or exc])
                    except lmdb.Error:
                        raise  # the transaction is unusable: the whole group fails
                    except Exception as exc:  # noqa: BLE001 - this operation only (rolled back)
                        out.append([False, exc])
    except Exception as exc:  # noqa: BLE001 - the commit failed: nothing of it is acknowledged
        full = storage_fault(exc, env)
        if full is None:
            log.exception("group commit of %d operations failed", sum(len(m) for m in messages))
        else:  # an operational fault, not a bug: one line
            log.warning("group commit of %d operations failed: %s", sum(len(m) for m in messages), full)
            exc = full
        return [[[False, exc]] * len(batch) for batch in messages]
    return outcomes


LOW_SPACE_BYTES = 1 << 20  # an I/O error with less free than this is a full disk (a short write)


def storage_fault(exc: BaseException, env: lmdb.Environment) -> DiskFull | MapFull | StoreIOFailed | None:
    """The store fault a failed commit amounts to, or None for anything else (a bug).

    LMDB reports a full disk as ENOSPC, or as EIO when a page write came up
    short; so an I/O error on a filesystem with (almost) no room left is a
    full disk too."""
    if isinstance(exc, lmdb.MapFullError):
        return MapFull(f"the store's LMDB map is full ({env.info()['map_size']} bytes): nothing was stored; "
                       "room returns as old requests are purged, or raise store_map_size")
    if not isinstance(exc, (lmdb.Error, OSError)):
        return None
    try:
        st = os.statvfs(env.path())
        low = st.f_bavail * st.f_frsize < LOW_SPACE_BYTES
    except OSError:
        low = False
    if getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in str(exc) or low:
        return DiskFull("the disk holding the gateway's store is full: nothing was stored")
    detail = str(exc).split(":", 1)[-1].strip() or type(exc).__name__
    return StoreIOFailed(f"the gateway's store cannot write ({detail}): nothing was stored")


def reply(first: bool, outcomes: list) -> bytes:
    """The reply frame for one message; an outcome that is not plain data
    (a handler's bug) becomes that operation's error, not the frame's."""
    parts = []
    for outcome in outcomes:
        try:
            parts.append(wire.part(outcome))
        except TypeError as exc:
            parts.append(wire.part([False, wire.StoreOpError(f"unsendable result: {exc}")]))
    return wire.frame_of([first, parts])


class _Reader:
    """Frames from a pipe: blocking for the first, then whatever else already arrived."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.frames = wire.Frames()
        self.eof = False
        self.poll = select.poll()
        self.poll.register(fd, select.POLLIN)

    def next(self, block: bool) -> bytes | None:
        """A frame's body; None when none is complete yet (``block=False``) or at EOF."""
        while True:
            body = self.frames.next()
            if body is not None:
                return body
            if self.eof:
                if self.frames.buf:
                    raise wire.ProtocolError("truncated frame at EOF")
                return None
            if not block and not self.poll.poll(0):
                return None
            data = os.read(self.fd, 1 << 20)
            self.eof = not data
            self.frames.feed(data)


def serve(env: lmdb.Environment, retention_ms: int, fd_in: int, out) -> None:
    """Group-commit what arrives on ``fd_in`` until EOF; replies to ``out``."""
    reader = _Reader(fd_in)
    while True:
        first = reader.next(block=True)
        if first is None:
            return
        frames = [first]
        while len(frames) < MAX_MERGE:
            more = reader.next(block=False)
            if more is None:
                break
            frames.append(more)
        outcomes = commit_group(env, retention_ms, [wire.decode(f) for f in frames])
        out.write(b"".join(reply(i == 0, o) for i, o in enumerate(outcomes)))
        out.flush()


def main(argv: list[str]) -> int:
    from ...gc_policy import freeze_startup_objects

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    path, map_size, retention_ms = argv
    env = open_env(path, int(map_size))
    freeze_startup_objects()
    try:
        serve(env, int(retention_ms), sys.stdin.fileno(), sys.stdout.buffer)
    except BrokenPipeError:
        pass  # the gateway is gone
    except wire.ProtocolError:
        log.exception("store writer: broken frame from the gateway")
        return 1
    finally:
        env.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
