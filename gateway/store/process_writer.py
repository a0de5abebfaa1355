"""The store's group-commit writer as a child process (``GatewayStore(writer="process")``).

Why a process and not a thread (gateway/group_writer.py): a writer thread runs
the operations' Python (record encoding, queue bookkeeping, request token
derivation) under the gateway's one GIL, and every time the event loop
releases the GIL (a socket call) the writer may take it until its next
commit, so the loop stalls behind it. A child process has its own GIL and
its own core; the event loop only pickles operations and unpickles results.
Durability is unchanged: LMDB is multi-process safe, the child commits with
fsync, and a future resolves only after the commit holding its write.

The parent side lives on the event loop, with no thread of its own (on a
small machine every thread hop is a scheduling delay): :meth:`ProcessWriter.submit`
stages an operation (the data form of GatewayStore.apply); everything staged
in one loop turn is pickled and written to the child's stdin at once
(non-blocking; buffered while the pipe is full), and the loop reads the
replies from the child's stdout as they come, in order, resolving each
caller's future. The child runs everything that arrived while it was
committing in its next transaction (group commit), so no commit waits for a
reply to travel back first. One writer serves one event loop (the gateway's).

Wire, over the child's stdin/stdout: a message is a 4-byte big-endian length
and a pickle (the child is our own program; nothing else writes these pipes).
Parent to child, one message per hand-over: the list of its operations, each
pickled on its own (one that cannot be pickled fails alone). Child to parent,
one reply per message in order: ``(first of its transaction, the pickled list
of (True, result) or (False, exception))``. Each operation runs in a nested
transaction of its own (one that raises is rolled back alone); a failed
commit fails every operation of the transaction.

Failures: if the child dies, every message sent to it and not answered fails
with :class:`WriterDied` (nothing of them is acknowledged; some may have been
committed, which at-least-once handling absorbs: every operation is
idempotent for its caller's retry), and the next message starts a new child.
The child exits at EOF on its stdin, so it never outlives the gateway.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import BinaryIO

log = logging.getLogger("edgistry.gateway.store")

_LEN = struct.Struct("!I")
MAX_MESSAGE = 1 << 30  # a bound on what either side will read
CLOSE_TIMEOUT_S = 30.0  # closing waits this long at most for the child's last replies


class WriterDied(RuntimeError):
    """The store's writer process failed during this write: it was not acknowledged."""


class ProcessWriter:
    """Group commit in a child process, driven from one event loop; the
    interface of GroupWriter (``submit``, ``start``, ``close``, counters)."""

    def __init__(self, store, take_hints: Callable[[], dict], hints_due: Callable[[], bool],
                 idle_s: float = 1.0) -> None:
        self.args = [str(store.path), str(store.map_size), str(store.retention_ms)]
        self.take_hints = take_hints
        self.hints_due = hints_due
        self.idle_s = idle_s
        self.commits = 0        # transactions committed
        self.writes = 0         # operations they held
        self._loop: asyncio.AbstractEventLoop | None = None
        self._staged: list = []
        self._child: _Child | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The child's pid while it runs (tests kill it)."""
        child = self._child
        return child.proc.pid if child is not None and child.proc.poll() is None else None

    def start(self) -> None:
        """Arm the idle tick (contact hints reach the disk when nothing else is written)."""
        loop = self._loop
        if loop is None:
            try:
                loop = self._bind()
            except RuntimeError:
                return  # no running loop here: hints go with the next write, or at close
        if self._idle is None and not self._closed:
            self._idle = loop.call_later(self.idle_s, self._idle_tick)

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError("a store's writer process serves one event loop")
        return loop

    def submit(self, op: object, urgent: bool = False) -> asyncio.Future:
        """Stage a write; the future resolves with its result once durable.
        ``urgent``: hand it (and what is staged before it) over now, not at
        the end of the loop turn (see GatewayStore.write)."""
        if self._closed:
            raise RuntimeError("the store is closed")
        loop = self._bind()
        fut = loop.create_future()
        if not self._staged and not urgent:
            loop.call_soon(self._hand_over)
        self._staged.append((op, fut))
        if urgent:
            self._hand_over()
        return fut

    def _hand_over(self) -> None:
        """Everything staged this loop turn, as one message to the child."""
        if not self._staged:
            return  # close() sent it already
        staged, self._staged = self._staged, []
        blobs, futs = [], []
        hints = self.take_hints()
        if hints:  # contact hints ride along (no caller waits for them)
            blobs.append(pickle.dumps(("contacts", (hints,)), protocol=5))
            futs.append(None)
        for op, fut in staged:
            try:
                blobs.append(pickle.dumps(op, protocol=5))
            except Exception as exc:  # noqa: BLE001 - not data: fails its caller alone
                if not fut.done():
                    fut.set_exception(TypeError(f"a store operation must be plain data to reach the "
                                                f"writer process: {exc}"))
                continue
            futs.append(fut)
        if blobs:
            self._send(blobs, futs)

    def _send(self, blobs: list[bytes], futs: list) -> None:
        child = self._child
        if self._closed and child is None:
            _fail_all(futs, RuntimeError("the store is closed"))
            return
        if child is None or child.dead:
            try:
                child = self._child = _Child(self.args, self._loop, self._replied)
            except OSError as exc:
                _fail_all(futs, WriterDied(f"cannot start the store's writer process: {exc}"))
                return
        child.send(pickle.dumps(blobs, protocol=5), futs)

    def _replied(self, new_txn: bool, futs: list, outcomes: bytes) -> None:
        self.commits += new_txn
        self.writes += len(futs)
        _deliver(futs, outcomes)

    def _idle_tick(self) -> None:
        self._idle = None
        if self._closed:
            return
        if not self._staged and self.hints_due():
            hints = self.take_hints()
            if hints:
                self._send([pickle.dumps(("contacts", (hints,)), protocol=5)], [None])
        self.start()

    def close(self) -> None:
        """Send what is staged, let the child commit it and exit, deliver its replies."""
        if self._closed:
            return
        self._closed = True
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self._hand_over()  # what is staged goes now (the scheduled hand-over then finds nothing)
        child, self._child = self._child, None
        if child is not None:
            child.stop()


class _Child:
    """One writer process, driven by the event loop: messages go out through a
    non-blocking pipe (buffered when the pipe is full), replies come back in
    order and are matched to what was sent."""

    def __init__(self, args: list[str], loop: asyncio.AbstractEventLoop,
                 on_reply: Callable[[bool, list, bytes], None]) -> None:
        # -P: nothing from the working directory is imported
        self.proc = subprocess.Popen([sys.executable, "-P", "-m", "edgistry.gateway.store.process_writer", *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self.loop = loop
        self.on_reply = on_reply
        self.out_fd, self.in_fd = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        os.set_blocking(self.out_fd, False)
        os.set_blocking(self.in_fd, False)
        self.outbuf = bytearray()
        self.inbuf = bytearray()
        self.inflight: collections.deque[list] = collections.deque()  # per message sent: its futures
        self.dead = False
        self.writing = False
        loop.add_reader(self.in_fd, self._readable)

    def send(self, body: bytes, futs: list) -> None:
        self.inflight.append(futs)
        self.outbuf += _LEN.pack(len(body)) + body
        if not self.writing:
            self._writable()

    def _writable(self) -> None:
        try:
            while self.outbuf:
                n = os.write(self.out_fd, self.outbuf)
                del self.outbuf[:n]
        except BlockingIOError:
            if not self.writing:
                self.writing = True
                self.loop.add_writer(self.out_fd, self._writable)
            return
        except OSError as exc:
            self._died(exc)
            return
        if self.writing:
            self.writing = False
            self.loop.remove_writer(self.out_fd)

    def _readable(self) -> None:
        try:
            data = os.read(self.in_fd, 1 << 20)
        except BlockingIOError:
            return
        except OSError as exc:
            self._died(exc)
            return
        if not data:
            self._died(EOFError("the writer process exited"))
            return
        self.inbuf += data
        self._replies()

    def _replies(self) -> None:
        while len(self.inbuf) >= 4:
            (n,) = _LEN.unpack_from(self.inbuf)
            if len(self.inbuf) < 4 + n:
                return
            body = bytes(self.inbuf[4:4 + n])
            del self.inbuf[:4 + n]
            try:
                new_txn, outcomes = pickle.loads(body)
                futs = self.inflight.popleft()
            except Exception as exc:  # noqa: BLE001 - a broken reply: treat the child as dead
                self._died(exc)
                return
            self.on_reply(new_txn, futs, outcomes)

    def _died(self, exc: BaseException) -> None:
        """What was sent and not answered is not acknowledged."""
        if self.dead:
            return
        self.dead = True
        self._unwatch()
        lost = list(self.inflight)
        self.inflight.clear()
        code = self.proc.poll()
        if lost:
            log.error("store writer process failed (%r, exit %s); %d writes not acknowledged",
                      exc, code, sum(len(f) for f in lost))
        err = WriterDied(f"the store's writer process failed ({exc!r}, exit {code}); "
                         "the write was not acknowledged")
        for futs in lost:
            _fail_all(futs, err)
        self._reap()

    def _unwatch(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.remove_reader(self.in_fd)
        if self.writing:
            self.writing = False
            self.loop.remove_writer(self.out_fd)

    def stop(self) -> None:
        """Send what is buffered, EOF, read the remaining replies (both at once: the
        child may be writing a large reply while we write), waiting at most
        CLOSE_TIMEOUT_S for a child that stopped reading or answering; then reap."""
        if self.dead:
            return
        self._unwatch()
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        poll = select.poll()
        poll.register(self.in_fd, select.POLLIN)
        if self.outbuf:
            poll.register(self.out_fd, select.POLLOUT)
        else:
            self.proc.stdin.close()
        try:
            while self.inflight:
                left = deadline - time.monotonic()
                ready = poll.poll(max(0, int(left * 1000))) if left > 0 else []
                if not ready:
                    raise TimeoutError("the writer process stopped reading or answering")
                for fd, _ in ready:
                    if fd == self.out_fd:
                        n = os.write(self.out_fd, self.outbuf)
                        del self.outbuf[:n]
                        if not self.outbuf:
                            poll.unregister(self.out_fd)
                            self.proc.stdin.close()  # EOF: the child commits what it has and exits
                    else:
                        data = os.read(self.in_fd, 1 << 20)
                        if not data:
                            raise EOFError("the writer process exited")
                        self.inbuf += data
                        self._replies()
                        if self.dead:
                            return
        except (OSError, EOFError) as exc:  # TimeoutError included
            log.warning("store writer process: %r while closing", exc)
            if isinstance(exc, TimeoutError):
                self.proc.kill()  # hung (or stopped): what it held is not acknowledged
        if not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        if self.inflight:
            self._died(EOFError("the writer process exited before answering"))
            return
        self.dead = True
        self._reap()

    def _reap(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _deliver(futs: list, reply: bytes) -> None:
    """On the staging loop: resolve each future with its operation's outcome."""
    try:
        outcomes = pickle.loads(reply)
    except Exception as exc:  # noqa: BLE001 - e.g. a result class this side cannot load
        _fail_all(futs, exc)
        return
    for fut, (ok, value) in zip(futs, outcomes):
        if _waiting(fut):
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)


def _fail_all(futs: list, exc: BaseException) -> None:
    for fut in futs:
        if _waiting(fut):
            fut.set_exception(exc)


def _waiting(fut: asyncio.Future | None) -> bool:
    """Someone may still await ``fut`` (not done, its loop not closed)."""
    return fut is not None and not fut.done() and not fut.get_loop().is_closed()


def _write_message(out: BinaryIO, body: bytes) -> None:
    out.write(_LEN.pack(len(body)) + body)


# ---- the child ----

def run_messages(store, messages: list[list]) -> list[list]:
    """Run every message's operations in one transaction (nested per operation);
    return their outcomes per message. A failed commit fails them all."""
    import lmdb
    outcomes: list[list] = [[] for _ in messages]
    try:
        with store.env.begin(write=True) as txn:
            for ops, out in zip(messages, outcomes):
                for op in ops:
                    try:
                        with store.env.begin(write=True, parent=txn) as child:
                            out.append((True, store.apply(child, op)))
                    except lmdb.Error:
                        raise  # the transaction is unusable: the whole group fails
                    except Exception as exc:  # noqa: BLE001 - this operation only (rolled back)
                        out.append((False, _sendable(exc)))
    except Exception as exc:  # noqa: BLE001 - the commit failed: nothing is acknowledged
        log.exception("group commit of %d operations failed", sum(len(m) for m in messages))
        err = _sendable(exc)
        return [[(False, err)] * len(ops) for ops in messages]
    return outcomes


def _sendable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc, protocol=5))
        return exc
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(exc).__name__}: {exc}")


MAX_MERGE = 64  # messages one transaction may take (they arrived while the last one committed)


class _MessageReader:
    """Messages from a pipe, blocking for the first, then whatever else already arrived."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray()
        self.eof = False
        self.poll = select.poll()
        self.poll.register(fd, select.POLLIN)

    def _parse(self) -> bytes | None:
        if len(self.buf) < 4:
            return None
        (n,) = _LEN.unpack_from(self.buf)
        if n > MAX_MESSAGE:
            raise EOFError(f"message of {n} bytes")
        if len(self.buf) < 4 + n:
            return None
        body = bytes(self.buf[4:4 + n])
        del self.buf[:4 + n]
        return body

    def next(self, block: bool) -> bytes | None:
        """A message; None when none is complete yet (``block=False``) or at EOF."""
        while True:
            body = self._parse()
            if body is not None or self.eof:
                if body is None and self.buf:
                    raise EOFError("truncated message")
                return body
            if not block and not self.poll.poll(0):
                return None
            data = os.read(self.fd, 1 << 20)
            if not data:
                self.eof = True
            self.buf += data


def main(argv: list[str]) -> int:
    from .store import GatewayStore
    from ...gc_policy import freeze_startup_objects

    # the gateway stops us (EOF on stdin), not a signal to its process group (Ctrl-C, a
    # service manager's SIGTERM): what it sends before it exits is still committed
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    path, map_size, retention_ms = argv
    store = GatewayStore(path, map_size=int(map_size), result_retention_ms=int(retention_ms), writer="none")
    freeze_startup_objects()
    reader, out = _MessageReader(sys.stdin.fileno()), sys.stdout.buffer
    try:
        while True:
            first = reader.next(block=True)
            if first is None:
                return 0
            messages = [first]
            while len(messages) < MAX_MERGE:  # group commit: everything that arrived meanwhile
                more = reader.next(block=False)
                if more is None:
                    break
                messages.append(more)
            ops = [[pickle.loads(op) for op in pickle.loads(m)] for m in messages]
            for i, outcomes in enumerate(run_messages(store, ops)):
                _write_message(out, pickle.dumps((i == 0, pickle.dumps(outcomes, protocol=5)), protocol=5))
            out.flush()
    except (BrokenPipeError, EOFError):
        return 0  # the gateway is gone
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
