"""The gateway's side of the store's writer process (child.py): :class:`Writer`.

It lives on the event loop, with no thread of its own (on a small machine
every thread hop is a scheduling delay). :meth:`Writer.submit` stages an
operation (a name from ops.HANDLERS and plain arguments); everything staged
in one loop turn goes to the child as one frame (wire.py), written to its
stdin without blocking (buffered while the pipe is full), and the loop reads
the replies from its stdout as they come, in order, resolving each caller's
future. The child commits whatever reached it while it was busy in one
transaction (group commit), so no commit waits for a reply to travel back
first, and a future resolves only after the fsync'd commit holding its
write. One writer serves one event loop (the gateway's).

Contact hints (the store's, not worth an fsync of their own) ride along with
every frame, and an idle tick sends them when nothing else is written for a
while.

Failures: if the child dies, every frame sent to it and not answered fails
with :class:`WriterDied` (nothing of it is acknowledged; some may have been
committed, which at-least-once handling absorbs: every operation is
idempotent for its caller's retry), and the next frame starts a new child.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable

from . import wire

log = logging.getLogger("edgistry.gateway.store")

CLOSE_TIMEOUT_S = 30.0  # closing waits this long at most for the child's last replies
IDLE_S = 1.0  # with nothing written for this long, the idle tick looks for contact hints to persist


class WriterDied(RuntimeError):
    """The store's writer process failed during this write: it was not acknowledged."""


class Writer:
    """Group commit in a child process, driven from one event loop (see the module docstring).

    ``take_hints()`` returns the contact hints not sent yet (as the
    ``contacts`` operation's argument) and counts them as sent;
    ``hints_due()`` says some hint has waited long enough for the idle tick."""

    def __init__(self, path: str, map_size: int, retention_ms: int, take_hints: Callable[[], list],
                 hints_due: Callable[[], bool], idle_s: float = IDLE_S) -> None:
        self.args = [str(path), str(map_size), str(retention_ms)]
        self.take_hints = take_hints
        self.hints_due = hints_due
        self.idle_s = idle_s
        self.commits = 0  # transactions committed
        self.writes = 0  # operations they held
        self._loop: asyncio.AbstractEventLoop | None = None
        self._staged: list[tuple[object, asyncio.Future]] = []
        self._child: _Child | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The child's pid while it runs."""
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

    def submit(self, name: str, args: tuple | list, urgent: bool = False) -> asyncio.Future:
        """Stage operation ``name``; the future resolves with its (result,
        changed ids) once durable, or with the error it raised. ``urgent``:
        hand it (and what is staged before it) over now, not at the end of
        the loop turn (see GatewayStore.write)."""
        if self._closed:
            raise RuntimeError("the store is closed")
        loop = self._bind()
        fut = loop.create_future()
        try:
            op = wire.part([name, args])
        except TypeError as exc:  # not plain data: fails its caller alone, nothing is sent
            fut.set_exception(TypeError(f"a store operation must be plain data to reach the writer: {exc}"))
            return fut
        if not self._staged and not urgent:
            loop.call_soon(self._hand_over)
        self._staged.append((op, fut))
        if urgent:
            self._hand_over()
        return fut

    def _hand_over(self) -> None:
        """Everything staged this loop turn, as one frame to the child."""
        if self._closed or not self._staged:
            return  # close() sent it already
        staged, self._staged = self._staged, []
        self._send(*self._with_hints(staged))

    def _with_hints(self, staged: list) -> tuple[list, list]:
        """(operations, their futures) of a frame: the contact hints first (no caller waits for them)."""
        hints = self.take_hints()
        parts: list = [wire.part(["contacts", [hints]])] if hints else []
        futs: list = [None] * len(parts)
        for op, fut in staged:
            parts.append(op)
            futs.append(fut)
        return parts, futs

    def _send(self, parts: list, futs: list, closing: bool = False) -> None:
        child = self._child
        if child is None or child.dead:
            try:
                child = self._child = _Child(self.args, None if closing else self._loop, self._replied)
            except OSError as exc:
                _fail_all(futs, WriterDied(f"cannot start the store's writer process: {exc}"))
                return
        child.send(wire.frame_of(parts), futs)

    def _replied(self, first: bool, futs: list, outcomes: list) -> None:
        self.commits += first
        self.writes += len(futs)
        for fut, (ok, value) in zip(futs, outcomes):
            if _waiting(fut):
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)

    def _idle_tick(self) -> None:
        self._idle = None
        if self._closed:
            return
        if not self._staged and self.hints_due():
            parts, futs = self._with_hints([])
            if parts:
                self._send(parts, futs)
        self.start()

    def close(self) -> None:
        """Send what is staged (and the contact hints), let the child commit it
        and exit, deliver its replies; at most CLOSE_TIMEOUT_S."""
        if self._closed:
            return
        self._closed = True
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        staged, self._staged = self._staged, []
        parts, futs = self._with_hints(staged)
        if parts:
            self._send(parts, futs, closing=True)
        child, self._child = self._child, None
        if child is not None:
            child.stop()


class _Child:
    """One writer process: frames go out through a non-blocking pipe (buffered
    when the pipe is full), replies come back in order and are matched to what
    was sent. Watched by ``loop`` (None: only :meth:`stop` reads it)."""

    def __init__(self, args: list[str], loop: asyncio.AbstractEventLoop | None,
                 on_reply: Callable[[bool, list, list], None]) -> None:
        # -P: nothing from the working directory is imported
        self.proc = subprocess.Popen([sys.executable, "-P", "-m", "edgistry.gateway.store.child", *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self.loop = loop
        self.on_reply = on_reply
        self.out_fd, self.in_fd = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        os.set_blocking(self.out_fd, False)
        os.set_blocking(self.in_fd, False)
        self.outbuf = bytearray()
        self.frames = wire.Frames()
        self.inflight: collections.deque[list] = collections.deque()  # per frame sent: its futures
        self.dead = False
        self.writing = False
        if loop is not None:
            loop.add_reader(self.in_fd, self._readable)

    def send(self, frame: bytes, futs: list) -> None:
        self.inflight.append(futs)
        self.outbuf += frame
        if not self.writing:
            self._writable()

    def _writable(self) -> None:
        try:
            while self.outbuf:
                n = os.write(self.out_fd, self.outbuf)
                del self.outbuf[:n]
        except BlockingIOError:
            if not self.writing and self.loop is not None:
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
        self.frames.feed(data)
        self._replies()

    def _replies(self) -> None:
        while True:
            try:
                body = self.frames.next()
                if body is None:
                    return
                first, outcomes = wire.decode(body)
                if not self.inflight or len(outcomes) != len(self.inflight[0]):
                    raise wire.ProtocolError("a reply that matches no frame sent")
            except Exception as exc:  # noqa: BLE001 - a broken reply: treat the child as dead
                self._died(exc)
                return
            self.on_reply(first, self.inflight.popleft(), outcomes)

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
        if self.loop is None or self.loop.is_closed():
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
                        self.frames.feed(data)
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


def _fail_all(futs: list, exc: BaseException) -> None:
    for fut in futs:
        if _waiting(fut):
            fut.set_exception(exc)


def _waiting(fut: asyncio.Future | None) -> bool:
    """Someone may still await ``fut`` (not done, its loop not closed)."""
    return fut is not None and not fut.done() and not fut.get_loop().is_closed()
