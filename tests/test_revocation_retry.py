"""A revocation whose later steps failed is finished on the next pass: the token set took it
at once (refusals start there), so it is no longer "new" then, and its queued requests, twin
changes and the devices' notice log would otherwise never hear of it."""

from __future__ import annotations

import pytest

from edgistry.firmware.caplets.revocation import RevocationSet
from edgistry.gateway.app import Gateway


class Steps:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list]] = []
        self.fail_once = True

    async def revoked_now(self, hashes):
        if self.fail_once:
            self.fail_once = False
            raise OSError("the store's writer went away")
        self.calls.append(("requests", list(hashes)))
        return 0


class Twins:
    def __init__(self, steps: Steps) -> None:
        self.steps = steps

    async def revoked_now(self, hashes):
        self.steps.calls.append(("twins", list(hashes)))


class Store:
    def __init__(self, steps: Steps) -> None:
        self.steps = steps

    async def add_revocations(self, records):
        self.steps.calls.append(("notice log", [h for h, _ in records]))


class Live(RevocationSet):
    height = 0


async def test_a_revocation_interrupted_after_the_token_set_is_finished_on_the_next_pass(tmp_path):
    steps = Steps()
    gw = object.__new__(Gateway)  # only what applying revocations touches
    gw.revoked, gw.service, gw.twins, gw.store = Live(), steps, Twins(steps), Store(steps)
    gw.revocation_file, gw._unsettled = tmp_path / "revoked.list", []
    h = b"h" * 32
    with pytest.raises(OSError):
        await gw.apply_revocations([(h, 2_000_000_000)], 5, False)
    assert h in gw.revoked and gw.revoked.height == 0 and steps.calls == []
    await gw.apply_revocations([(h, 2_000_000_000)], 5, False)  # the follower retries the height
    assert steps.calls == [("requests", [h]), ("twins", [h]), ("notice log", [h])]
    assert gw.revoked.height == 5
    await gw.apply_revocations([(h, 2_000_000_000)], 6, False)
    assert len(steps.calls) == 3  # settled: not done a third time
