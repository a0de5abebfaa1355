"""A small process supervisor for a localnet: start, find, signal and stop by pid.

Every process runs in its own session (so a terminal's Ctrl-C or the exit of
``edgistry cluster up`` does not touch it) with stdout and stderr appended to
``DIR/logs/NAME.log``, and is recorded in ``DIR/run/NAME.json``::

    {"name": "node0-cmt", "pid": 1234, "start_ticks": 987654, "argv": [...], "log": "logs/node0-cmt.log"}

``start_ticks`` is the process start time from ``/proc/PID/stat``: a record
matches a live process only if that pid still exists, is not a zombie, and
started at that tick, so a recycled pid is never mistaken for ours and never
signalled. Nothing here kills by name. Liveness is judged by pid, never by
exit status (CometBFT exits 0 when its app dies).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

RUN_DIR = "run"
LOG_DIR = "logs"
STOP_TIMEOUT = 15.0  # seconds a process gets after SIGTERM before SIGKILL
KILL_TIMEOUT = 5.0  # seconds to wait for a SIGKILLed process to go
POLL = 0.05


@dataclass(frozen=True)
class ProcRecord:
    """What the launcher knows about one process it started."""

    name: str
    pid: int
    start_ticks: int | None
    argv: list[str]
    log: str  # relative to the cluster directory


def start_ticks(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot; None if gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    if not fields or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])  # field 22 of stat(5); fields here start at field 3


def _runs(pid: int, argv: list[str]) -> bool:
    """Whether ``pid`` is a process of this user running ``argv`` (as recorded when started).
    A wrapper that execs its command (``ip netns exec``, ``setpriv``) leaves only the command
    in /proc, and a script leaves its interpreter in front: the command lines must agree on
    their tails, the program's own name aside."""
    try:
        if os.stat(f"/proc/{pid}").st_uid != os.geteuid():
            return False
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            running = fh.read().split(b"\0")[:-1]
    except OSError:
        return False
    recorded = [os.fsencode(a) for a in argv]
    n = min(len(running), len(recorded)) - 1
    if n < 1:  # no arguments on one side: the program names must agree
        return bool(running) and bool(recorded) and os.path.basename(running[0]) == os.path.basename(recorded[-1])
    return running[-n:] == recorded[-n:]


class Launcher:
    """Processes of one cluster directory, known by name and recorded pid."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.run_dir = self.dir / RUN_DIR
        self.log_dir = self.dir / LOG_DIR
        self._children: dict[str, subprocess.Popen] = {}  # started by this object: reaped here

    # ---- records ----
    def _record_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.json"

    def record(self, name: str) -> ProcRecord | None:
        """The record of ``name``: only one this user wrote (its own file, in its own
        directory, not writable by others). Whoever could plant a record could have a
        process of ours signalled in its name."""
        path = self._record_path(name)
        try:
            for p in (self.run_dir, path):
                st = os.lstat(p)
                if st.st_uid != os.geteuid() or st.st_mode & 0o022 or stat.S_ISLNK(st.st_mode):
                    return None
            return ProcRecord(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def records(self) -> list[ProcRecord]:
        if not self.run_dir.is_dir():
            return []
        found = (self.record(p.stem) for p in sorted(self.run_dir.glob("*.json")))
        return [r for r in found if r is not None]

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    # ---- liveness ----
    def pid(self, name: str) -> int | None:
        """The pid of ``name`` if it is running, else None."""
        child = self._children.get(name)
        if child is not None:
            return child.pid if child.poll() is None else None
        rec = self.record(name)
        if rec is None or not self._started(rec) or not _runs(rec.pid, rec.argv):
            return None
        return rec.pid

    def alive(self, name: str) -> bool:
        return self.pid(name) is not None

    def _started(self, rec: ProcRecord) -> bool:
        """Whether the process ``rec`` records still exists (its pid with the recorded start
        tick, not a zombie), whatever it runs now."""
        self._reap(rec.pid)
        return start_ticks(rec.pid) == rec.start_ticks

    @staticmethod
    def _reap(pid: int) -> None:
        try:  # our child from an earlier Launcher in this process: collect a zombie
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass

    # ---- starting ----
    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> ProcRecord:
        """Start ``argv`` in a new session, logging to ``logs/NAME.log``; record its pid."""
        if self.alive(name):
            raise RuntimeError(f"{name} is already running (pid {self.pid(name)})")
        # the logs are the processes' stdout: private to the user, like the homes they run
        for d in (self.run_dir, self.log_dir):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(d, 0o700)
        log = self.log_path(name)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "ab") as out:
            out.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(argv)}\n".encode())
            out.flush()
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, **(env or {})}, start_new_session=True)
        self._children[name] = proc
        rec = ProcRecord(name, proc.pid, start_ticks(proc.pid), list(argv), str(log.relative_to(self.dir)))
        tmp = self._record_path(name).with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(rec)) + "\n")
        tmp.replace(self._record_path(name))
        return rec

    # ---- signalling and stopping ----
    def send(self, name: str, sig: int) -> bool:
        """Send ``sig`` to ``name`` if it is running; True if sent."""
        pid = self.pid(name)
        if pid is None:
            return False
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return False
        return True

    def _exists(self, name: str) -> bool:
        """Whether the process started as ``name`` still exists, exiting included: its pid
        with the recorded start tick, not yet a zombie. ``alive`` is stricter (the command
        line must match, so a recycled pid is never signalled), and a process that is
        exiting has already lost its command line; waiting on ``alive`` would call it gone
        while it still holds its ports and files."""
        child = self._children.get(name)
        if child is not None:
            return child.poll() is None
        rec = self.record(name)
        return rec is not None and self._started(rec)

    def wait_exit(self, name: str, timeout: float) -> bool:
        """True once ``name`` is no longer running; False if it still runs after ``timeout``."""
        deadline = time.monotonic() + timeout
        while self._exists(name):
            if time.monotonic() > deadline:
                return False
            time.sleep(POLL)
        return True

    def stop(self, name: str, timeout: float = STOP_TIMEOUT, sig: int = signal.SIGTERM) -> str:
        """Stop ``name``: ``sig`` (SIGTERM), then SIGKILL after ``timeout``. Says what happened."""
        pid = self.pid(name)
        if pid is None:
            outcome = "not running"
        else:
            if sig == signal.SIGTERM:
                self.send(name, signal.SIGCONT)  # a paused process cannot handle SIGTERM
            self.send(name, sig)
            if self.wait_exit(name, timeout):
                outcome = f"stopped (pid {pid})"
            else:
                self.send(name, signal.SIGKILL)
                outcome = f"killed (pid {pid})" if self.wait_exit(name, KILL_TIMEOUT) else f"still running (pid {pid})"
        if not self.alive(name):
            self._children.pop(name, None)
            self._record_path(name).unlink(missing_ok=True)
        return outcome

    def kill(self, name: str) -> str:
        """kill -9 ``name`` and wait (bounded) for it to go."""
        return self.stop(name, timeout=KILL_TIMEOUT, sig=signal.SIGKILL)
