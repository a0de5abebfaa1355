"""A board's state slot (32 KiB) holds less than the requests a gateway may queue for it
(arguments up to 16 KiB each): the largest requests of a batch that would not fit are
answered "too large for this device's storage", and the board goes on serving. Before,
the slot's refusal stopped the board's loop, and since nothing was acknowledged the same
requests stopped it again at every boot. The board (dev_mp.Board, as main.py runs it)
against the real link server."""
import json
from pathlib import Path

from runtime_helpers import Queue

from board_helpers import board_on_link
from edgistry.firmware.device.dev_core import TOO_LARGE_HERE
from edgistry.firmware.link.link_device import BAD_ARGUMENTS
from edgistry.firmware.device.dev_mp import Board
from edgistry.firmware.device.dev_services import Services


def test_requests_too_large_for_the_boards_state_are_refused_and_the_board_goes_on(tmp_path: Path) -> None:
    with board_on_link(tmp_path) as (backend, home, board):
        svc = Services()
        svc.register("sensor", "read", lambda args, call: {"ok": 1})
        q = Queue(backend, home)
        big = json.dumps("a" * 13000).encode()  # well under the gateway's max_args_bytes (16 KiB)
        assert len(big) < 16 * 1024
        first, second = q.add("sensor", "read", big), q.add("sensor", "read", big)
        small = q.add("sensor", "read", b"{}")
        logs = []
        report = Board(str(board), svc, log=logs.append).run(wakes=1, sleep=lambda s: None)
        assert report.received == 3 and report.executed >= 1
        answers = {rid: backend.answers.get(rid) for rid in (first, second, small)}
        assert answers[small] is not None and answers[small].status == 0
        refused = [a for a in answers.values() if a is not None and a.status == BAD_ARGUMENTS]
        assert refused and all(a.error == TOO_LARGE_HERE for a in refused)
        assert all(a is not None for a in answers.values())  # every request answered, none left to stop it
        again = Board(str(board), svc, log=logs.append).run(wakes=1, sleep=lambda s: None)  # a reboot
        assert again.received == 0
