"""A single LMDB writer thread with group commit (used by gateway/store.py).

Writes submitted from the event loop while a commit is in progress (or in the
same loop turn) share the next transaction, each in a nested transaction of
its own, so a write that raises is rolled back alone; every caller's future
resolves only after the commit holding its write is on disk. The event loop
never waits for an fsync, and one fsync serves many writes.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable

import lmdb

log = logging.getLogger("edgistry.gateway.store")


class GroupWriter:
    """One writer thread, group commit (see the module docstring).

    :meth:`submit` (on an event loop) stages an operation; everything staged
    in one loop turn is handed to the thread together, and the thread takes
    whatever has been handed over since its last commit into the next
    transaction. ``apply(txn, op)`` runs it in a nested transaction on the
    writer thread; its result (or exception) resolves the future after the
    commit. A failed commit fails every future of it. ``before_commit(txn)``
    runs first in every transaction (the store flushes its contact hints
    there); ``idle()`` runs when nothing was written for ``idle_s``.
    """

    def __init__(self, env: lmdb.Environment, apply: Callable[[lmdb.Transaction, object], object],
                 before_commit: Callable[[lmdb.Transaction], None],
                 idle: Callable[[], None], idle_s: float = 1.0) -> None:
        self.env = env
        self.apply = apply
        self.before_commit = before_commit
        self.idle = idle
        self.idle_s = idle_s
        self.commits = 0        # transactions committed
        self.writes = 0         # writes they held
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._staged: dict[asyncio.AbstractEventLoop, list] = {}
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self) -> None:
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
                self._thread.start()

    def submit(self, op: object, urgent: bool = False) -> asyncio.Future:
        """Stage a write; the future resolves with its result once durable.
        ``urgent``: hand it (and what this loop staged before it) over now,
        not at the end of the loop turn (see GatewayStore.write)."""
        if self._closed:
            raise RuntimeError("the store is closed")
        self.start()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._lock:
            staged = self._staged.get(loop)
            if staged is None:
                staged = self._staged[loop] = []
                if not urgent:
                    loop.call_soon(self._hand_over, loop)
            staged.append((op, fut, loop))
        if urgent:
            self._hand_over(loop)
        return fut

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            ops = self._staged.pop(loop, None)
        if ops:
            self._q.put(ops)

    def close(self) -> None:
        """Commit what was staged or handed over, then stop the thread."""
        with self._lock:
            self._closed = True
            thread = self._thread
            staged = [ops for ops in self._staged.values() if ops]
            self._staged.clear()  # (their scheduled hand-overs then find nothing)
        for ops in staged:
            self._q.put(ops)
        if thread is not None:
            self._q.put(None)
            thread.join(30)

    def _run(self) -> None:
        while True:
            try:
                first = self._q.get(timeout=self.idle_s)
            except queue.Empty:
                self._safely(self.idle)
                continue
            stop = first is None
            ops = [] if stop else list(first)
            while True:  # group commit: everything handed over meanwhile
                try:
                    more = self._q.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                else:
                    ops.extend(more)
            if ops:
                self._commit(ops)
            if stop:
                return

    def _commit(self, ops: list) -> None:
        done = []
        try:
            with self.env.begin(write=True) as txn:
                self.before_commit(txn)
                for op, fut, loop in ops:
                    try:
                        with self.env.begin(write=True, parent=txn) as child:
                            res = self.apply(child, op)
                        done.append((fut, loop, res, None))
                    except lmdb.Error:
                        raise  # the transaction is unusable: the whole group fails
                    except Exception as exc:  # this write only (its nested transaction aborted)
                        done.append((fut, loop, None, exc))
            self.commits += 1
            self.writes += len(ops)
        except Exception as exc:
            log.exception("group commit of %d writes failed", len(ops))
            done = [(fut, loop, None, exc) for _, fut, loop in ops]
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for fut, loop, res, exc in done:
            by_loop.setdefault(loop, []).append((fut, res, exc))
        for loop, items in by_loop.items():  # one wake-up per loop, not one per write
            try:
                loop.call_soon_threadsafe(_resolve_all, items)
            except RuntimeError:  # that loop is closed: nobody waits any more
                pass

    @staticmethod
    def _safely(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            log.exception("store writer: idle task failed")


def _resolve_all(items: list[tuple[asyncio.Future, object, BaseException | None]]) -> None:
    for fut, res, exc in items:
        if fut.done():
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(res)
