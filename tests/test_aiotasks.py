"""cancel_and_wait: a task that survives one cancellation (as 3.11's wait_for lets
a loop do) is still stopped; one that never stops is reported, not waited on forever."""

from __future__ import annotations

import asyncio

import pytest

from edgistry import aiotasks
from edgistry.aiotasks import cancel_and_wait

pytestmark = pytest.mark.timeout(30)


async def _shrugs_off(times: int, ended: list, give_up: asyncio.Event | None = None) -> None:
    """A loop that swallows its first ``times`` cancellations (or all until
    ``give_up`` is set), then ends."""
    while True:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            if times == 0 or (give_up is not None and give_up.is_set()):
                ended.append(True)
                raise
            times -= 1


async def test_a_task_that_swallowed_a_cancel_is_cancelled_again(monkeypatch):
    monkeypatch.setattr(aiotasks, "RECANCEL_S", 0.05)
    ended: list = []
    task = asyncio.ensure_future(_shrugs_off(2, ended))
    await asyncio.sleep(0)
    # the plain way waits forever: one cancel, then the loop sleeps again
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=0.2)
    assert not done and not ended
    assert await cancel_and_wait([task]) == set()
    assert task.cancelled() and ended == [True]


async def test_a_task_that_never_ends_is_returned_after_the_rounds(monkeypatch):
    monkeypatch.setattr(aiotasks, "RECANCEL_S", 0.02)
    ended: list = []
    give_up = asyncio.Event()
    task = asyncio.ensure_future(_shrugs_off(10_000, ended, give_up))
    other = asyncio.ensure_future(asyncio.sleep(0))
    await asyncio.sleep(0.01)
    assert await cancel_and_wait([task, other], rounds=3) == {task}
    assert not ended
    give_up.set()  # clean up: the next cancel ends it
    assert await cancel_and_wait([task], rounds=1) == set() and ended == [True]


async def test_finished_tasks_and_their_errors_are_consumed_quietly():
    async def boom() -> None:
        raise RuntimeError("boom")

    t = asyncio.ensure_future(boom())
    await asyncio.sleep(0)
    assert await cancel_and_wait([t]) == set()
    assert isinstance(t.exception(), RuntimeError)
