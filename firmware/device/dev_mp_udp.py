"""The MicroPython port's wake over the datagram link (``"link": "udp"`` in device.json).

One UDP socket (the gateway's link host and port number), ``select.poll`` for
the replies, dev_dgram.DgramWake for the protocol. Only a UDP board ships this
module and the datagram modules it imports; dev_mp.Board.wake calls it.
"""

import os
import select
import socket
import time

from .dev_boot import unix_ms, ticks_ms, ticks_diff
from .dev_core import WakeFailed
from .dev_dgram import DgramWake, load_context, RECV_SIZE, DGRAM_RETRIES, REPLY_TIMEOUT_MS
from ..link.link_dgram import DgramDevice


def wake_udp(board):
    """One wake of ``board`` (a dev_mp.Board) over the datagram link; a Report, or WakeFailed."""
    dev = DgramDevice(board.root_token, board.link_id, load_context(board.state.dgram), os.urandom)
    sock = None
    try:
        try:
            addr = socket.getaddrinfo(board.host, board.port)[0][-1]
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.connect(addr)
        except OSError as exc:
            raise WakeFailed("cannot reach %s:%d over udp: %s" % (board.host, board.port, exc))
        poller = select.poll()
        poller.register(sock, select.POLLIN)

        def recv(timeout_ms):
            start = ticks_ms()
            while True:
                left = timeout_ms - ticks_diff(ticks_ms(), start)
                if left <= 0 or not poller.poll(left):
                    return None
                try:
                    return sock.recv(RECV_SIZE)
                except OSError:  # ICMP port unreachable: nobody listens (yet)
                    time.sleep(0.05)

        w = DgramWake(board.state, board.services, dev, board.secret, unix_ms, ticks_ms,
                      board.duty_cycle_s, sock.send, recv,
                      DGRAM_RETRIES if board.udp_retries is None else board.udp_retries,
                      REPLY_TIMEOUT_MS if board.udp_timeout_ms is None else board.udp_timeout_ms,
                      log=board.log, on_twin=board.on_twin)
        try:
            return w.run()
        except OSError as exc:
            raise WakeFailed("udp link to %s:%d failed: %s" % (board.host, board.port, exc))
    finally:
        if sock is not None:
            sock.close()
