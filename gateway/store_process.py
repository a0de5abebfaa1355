"""The store's group-commit writer as a child process (``GatewayStore(writer="process")``).

Why a process and not a thread (gateway/group_writer.py): a writer thread runs
the operations' Python (record encoding, queue bookkeeping, request token
derivation) under the gateway's one GIL, and every time the event loop
releases the GIL (a socket call) the writer may take it until its next
commit, so the loop stalls behind it. A child process has its own GIL and
its own core; the event loop only pickles operations and unpickles results.
Durability is unchanged: LMDB is multi-process safe, the child commits with
fsync, and a future resolves only after the commit holding its write.

The parent side: :meth:`ProcessWriter.submit` stages an operation (the data
form of GatewayStore.apply); everything staged in one loop turn is pickled on
the loop and handed to a sending thread, which writes whatever was handed
over since its last message as one message, without waiting for replies; a
reply thread reads the replies in order and hands each chunk's outcomes to
the loop that staged it, where they are unpickled. The child runs everything
that arrived while it was committing in its next transaction (group commit),
so the next commit never waits for a reply to travel back first. Neither
thread does more than pipe I/O and queue handling: each holds the GIL for
microseconds.

Wire, over the child's stdin/stdout: a message is a 4-byte big-endian length
and a pickle (the child is our own program; nothing else writes these pipes).
Parent to child: a list of chunks, each the list of one hand-over's
operations, each pickled on its own. Child to parent, one reply per message
in order: ``(first of its transaction, [per chunk: the pickled list of
(True, result) or (False, exception)])``. Each operation runs in a nested
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
import queue
import select
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import BinaryIO

log = logging.getLogger("edgistry.gateway.store")

_LEN = struct.Struct("!I")
MAX_MESSAGE = 1 << 30  # a bound on what either side will read


class WriterDied(RuntimeError):
    """The store's writer process failed during this write: it was not acknowledged."""


class ProcessWriter:
    """Group commit in a child process; the interface of GroupWriter."""

    def __init__(self, store, take_hints: Callable[[], dict], idle: Callable[[], None],
                 idle_s: float = 1.0) -> None:
        self.args = [str(store.path), str(store.map_size), str(store.retention_ms)]
        self.take_hints = take_hints
        self.idle = idle
        self.idle_s = idle_s
        self.commits = 0        # transactions committed
        self.writes = 0         # operations they held
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._staged: dict[asyncio.AbstractEventLoop, list] = {}
        self._thread: threading.Thread | None = None
        self._child: _Child | None = None
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The child's pid while it runs (tests kill it)."""
        child = self._child
        return child.proc.pid if child is not None and child.proc.poll() is None else None

    def start(self) -> None:
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="store-writer-io", daemon=True)
                self._thread.start()

    def submit(self, op: object) -> asyncio.Future:
        """Stage a write; the future resolves with its result once durable."""
        if self._closed:
            raise RuntimeError("the store is closed")
        self.start()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._lock:
            staged = self._staged.get(loop)
            if staged is None:
                staged = self._staged[loop] = []
                loop.call_soon(self._hand_over, loop)
            staged.append((op, fut))
        return fut

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            staged = self._staged.pop(loop, None)
        if not staged:
            return
        blobs, futs = [], []
        hints = self.take_hints()
        if hints:  # contact hints ride along (no caller waits for them)
            blobs.append(pickle.dumps(("contacts", (hints,)), protocol=5))
            futs.append(None)
        for op, fut in staged:
            try:
                blobs.append(pickle.dumps(op, protocol=5))
            except Exception as exc:  # noqa: BLE001 - not data: fails its caller alone
                fut.set_exception(TypeError(f"a store operation must be plain data to reach the writer "
                                            f"process: {exc}"))
                continue
            futs.append(fut)
        if blobs:
            self._q.put((blobs, futs, loop))

    def close(self) -> None:
        """Commit what was handed over, then stop the thread and the child."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._q.put(None)
            thread.join(30)
        child, self._child = self._child, None
        if child is not None:
            child.stop()

    # -- the sending thread: everything handed over since the last send, as one message --

    def _run(self) -> None:
        while True:
            try:
                first = self._q.get(timeout=self.idle_s)
            except queue.Empty:
                _safely(self.idle)
                continue
            stop = first is None
            batch = [] if stop else [first]
            while True:
                try:
                    more = self._q.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                else:
                    batch.append(more)
            if batch:
                self._send(batch)
            if stop:
                return

    def _send(self, batch: list) -> None:
        for _ in range(2):  # a dead child is replaced once per message
            child = self._child
            if child is None or child.dead:
                if child is not None:
                    child.stop()
                try:
                    child = self._child = _Child(self.args, self._replied)
                except OSError as exc:
                    _fail_batch(batch, WriterDied(f"cannot start the store's writer process: {exc}"))
                    return
            if child.send(batch):
                return
        _fail_batch(batch, WriterDied("the store's writer process keeps failing; the write was not acknowledged"))

    def _replied(self, batch: list, new_txn: bool, replies: list[bytes]) -> None:
        """On the reply thread: count, and hand each chunk's outcomes to its loop."""
        self.commits += new_txn
        self.writes += sum(len(futs) for _, futs, _ in batch)
        for (_, futs, loop), reply in zip(batch, replies):
            _call(loop, _deliver, futs, reply)


class _Child:
    """One writer process, what was sent to it and not answered yet, and the
    thread that reads its replies (in the order the messages were sent)."""

    def __init__(self, args: list[str], on_reply: Callable[[list, bool, list[bytes]], None]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "edgistry.gateway.store_process", *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self.on_reply = on_reply
        self.inflight: collections.deque[list] = collections.deque()
        self.lock = threading.Lock()
        self.dead = False
        self.stopping = False
        self.reader = threading.Thread(target=self._read_replies, name="store-writer-replies", daemon=True)
        self.reader.start()

    def send(self, batch: list) -> bool:
        """Send one message; False when this child is dead (nothing was sent)."""
        body = pickle.dumps([blobs for blobs, _, _ in batch], protocol=5)
        with self.lock:
            if self.dead:
                return False
            self.inflight.append(batch)
        try:
            _write_message(self.proc.stdin, body)
        except OSError:
            pass  # the reader meets EOF and fails everything in flight, this message too
        return True

    def _read_replies(self) -> None:
        batch = None
        try:
            while True:
                body = _read_message(self.proc.stdout)
                if body is None:
                    raise EOFError("the writer process exited")
                new_txn, replies = pickle.loads(body)
                with self.lock:
                    batch = self.inflight.popleft()
                if len(replies) != len(batch):
                    raise EOFError(f"{len(replies)} replies for {len(batch)} chunks")
                self.on_reply(batch, new_txn, replies)
                batch = None
        except Exception as exc:  # noqa: BLE001 - the child is gone: what it held is not acknowledged
            with self.lock:
                self.dead = True
                lost = ([batch] if batch is not None else []) + list(self.inflight)
                self.inflight.clear()
            if lost or not self.stopping:
                code = self.proc.poll()
                log.error("store writer process failed (%r, exit %s); %d writes not acknowledged",
                          exc, code, sum(len(f) for b in lost for _, f, _ in b))
                err = WriterDied(f"the store's writer process failed ({exc!r}, exit {code}); "
                                 "the write was not acknowledged")
                for b in lost:
                    _fail_batch(b, err)

    def stop(self) -> None:
        """EOF to the child: it commits what it has, replies, exits."""
        self.stopping = True
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.reader.join(10)
        self.proc.stdout.close()


def _fail_batch(batch: list, exc: BaseException) -> None:
    for _, futs, loop in batch:
        _call(loop, _fail_all, futs, exc)


def _call(loop: asyncio.AbstractEventLoop, fn, *args) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # that loop is closed: nobody waits any more
        pass


def _deliver(futs: list, reply: bytes) -> None:
    """On the staging loop: resolve each future with its operation's outcome."""
    try:
        outcomes = pickle.loads(reply)
    except Exception as exc:  # noqa: BLE001 - e.g. a result class this side cannot load
        _fail_all(futs, exc)
        return
    for fut, (ok, value) in zip(futs, outcomes):
        if fut is None or fut.done():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


def _fail_all(futs: list, exc: BaseException) -> None:
    for fut in futs:
        if fut is not None and not fut.done():
            fut.set_exception(exc)


def _safely(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:
        log.exception("store writer: idle task failed")


def _write_message(out: BinaryIO, body: bytes) -> None:
    out.write(_LEN.pack(len(body)) + body)


def _read_message(inp: BinaryIO) -> bytes | None:
    """One message, or None at a clean EOF; raises EOFError on a truncated one."""
    head = _read_exactly(inp, 4)
    if head is None:
        return None
    (n,) = _LEN.unpack(head)
    if n > MAX_MESSAGE:
        raise EOFError(f"message of {n} bytes")
    body = _read_exactly(inp, n)
    if body is None:
        raise EOFError("truncated message")
    return body


def _read_exactly(inp: BinaryIO, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = inp.read(n - len(buf))
        if not chunk:
            if buf:
                raise EOFError("truncated message")
            return None
        buf += chunk
    return bytes(buf)


# ---- the child ----

def run_chunks(store, chunks: list[list]) -> list[list]:
    """Run every chunk's operations in one transaction (nested per operation);
    return their outcomes per chunk. A failed commit fails them all."""
    import lmdb
    outcomes: list[list] = [[] for _ in chunks]
    try:
        with store.env.begin(write=True) as txn:
            for ops, out in zip(chunks, outcomes):
                for op in ops:
                    try:
                        with store.env.begin(write=True, parent=txn) as child:
                            out.append((True, store.apply(child, op)))
                    except lmdb.Error:
                        raise  # the transaction is unusable: the whole group fails
                    except Exception as exc:  # noqa: BLE001 - this operation only (rolled back)
                        out.append((False, _sendable(exc)))
    except Exception as exc:  # noqa: BLE001 - the commit failed: nothing is acknowledged
        log.exception("group commit of %d operations failed", sum(len(c) for c in chunks))
        err = _sendable(exc)
        return [[(False, err)] * len(ops) for ops in chunks]
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
            if not block and not select.select([self.fd], [], [], 0)[0]:
                return None
            data = os.read(self.fd, 1 << 20)
            if not data:
                self.eof = True
            self.buf += data


def main(argv: list[str]) -> int:
    from edgistry.gateway.store import GatewayStore

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the gateway stops us (EOF), not a terminal's Ctrl-C
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    path, map_size, retention_ms = argv
    store = GatewayStore(path, map_size=int(map_size), result_retention_ms=int(retention_ms), writer="none")
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
            per_message = [[[pickle.loads(op) for op in chunk] for chunk in pickle.loads(m)] for m in messages]
            outcomes = run_chunks(store, [chunk for chunks in per_message for chunk in chunks])
            at = 0
            for i, chunks in enumerate(per_message):
                part = outcomes[at:at + len(chunks)]
                at += len(chunks)
                _write_message(out, pickle.dumps((i == 0, [pickle.dumps(o, protocol=5) for o in part]),
                                                 protocol=5))
            out.flush()
    except (BrokenPipeError, EOFError):
        return 0  # the gateway is gone
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
