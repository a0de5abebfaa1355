"""One wake of the device program over the datagram link (UDP), portable.

Theory of operation
-------------------
The TCP wake (dev_core.Wake) feeds a byte stream to a session; here every
turn is one datagram out and (usually) one back, made and opened by
link_dgram.DgramDevice. The durable rules are the TCP wake's, and the code
that keeps them is shared (``Wake.absorb``, ``Wake.run_pending``,
``Wake.execute``)::

    wake     -> DATA 03 on the saved context (no reply after the retries: a full
                WAKE, whose WELCOME makes a new context; a RESYNC: WAKE again)
    reply    -> absorb: revocations, twin, each request stored durably
             -> run the stored ones in sequence order (a ``running`` one that
                a crash cut short: again if read-only/idempotent, else
                INTERRUPTED), each answer persisted before it is sent
             -> DATA 04/05: acknowledges the reply, carries one datagram of
                answers (earlier wakes' first) and the pending twin report
    reply to a DATA with answers: the gateway stored them -> mark them acked
    nothing left to send and the gateway said no ``more``: a bare ACK, sleep

The context (counter, K_link, kid, master, sequence) lives in DevState.dgram
and is saved before each datagram leaves, so a restart never reuses a
counter or a sequence number (the gateway would drop the datagram as a
replay). A lost datagram is sent again as a new one (next sequence), after a
timeout that doubles each try. When the device store is full, a reply is not
acknowledged (its requests come again on a later wake), as the TCP wake does
not ACK what it cannot store.

The port gives ``send(bytes)`` and ``recv(timeout_ms) -> bytes | None``
(dev_mp.py: a blocking socket with poll; firmware/runtime/device.py: the
same on CPython).
"""

from ..link import link_dgram as dg
from ..link import link_wire as wire
from .dev_boot import ticks_diff
from .dev_core import Wake, WakeFailed
from .dev_state import DONE, b64, unb64

REPLY_TIMEOUT_MS = 1000   # first wait for a reply; doubled each retry (1 + 2 + 4 + 8 s at most)
DGRAM_RETRIES = 3         # datagrams sent again per turn before the turn fails
RECV_SIZE = dg.MAX_DATAGRAM + 80  # bounded: a longer datagram is cut, fails its MAC, is dropped
ANSWER_BUDGET = dg.MAX_DATAGRAM - 32  # what a DATA leaves for its Responses (type, kid, seq, ack, tag)
TOO_LARGE = 4             # the answer status of an answer no datagram can carry
_BYTES = ("lk", "master")


def load_context(saved):
    """DevState.dgram (JSON-ready) -> the dict DgramDevice keeps (bytes)."""
    out = {}
    for k in saved:
        out[k] = unb64(saved[k]) if k in _BYTES else saved[k]
    if "ctr" not in out:
        out["ctr"] = 0
    return out


def dump_context(state):
    out = {}
    for k in state:
        v = state[k]
        out[k] = b64(v) if k in _BYTES and v is not None else v
    return out


def answer_size(r):
    return wire.field_size(len(wire.encode("DeviceResponse", r)))


class DgramWake(Wake):
    """A wake over the datagram link; ``run()`` gives the Report or raises WakeFailed."""

    def __init__(self, state, services, device, secret, now_ms, ticks_ms, duty_cycle_s,
                 send, recv, retries=DGRAM_RETRIES, timeout_ms=REPLY_TIMEOUT_MS,
                 on_twin=None, log=None):
        Wake.__init__(self, state, services, None, secret, now_ms, ticks_ms, duty_cycle_s,
                      on_twin=on_twin, log=log)
        self.dev = device
        self._send = send
        self._recv = recv
        self.retries = retries
        self.timeout_ms = timeout_ms
        self.datagrams = 0        # datagrams sent (retries included)
        self.full = False

    def _out(self, data):
        self.st.dgram = dump_context(self.dev.state)
        self.st.save()  # counter / sequence durable before the datagram leaves
        self.datagrams += 1
        self._send(data)

    def _exchange(self, make):
        """Send ``make()`` and wait for its reply (a Requests dict, or None after a
        RESYNC); lost: a new datagram, up to ``retries`` times; then WakeFailed."""
        wait = self.timeout_ms
        for _ in range(self.retries + 1):
            self._out(make())
            start = self.ticks_ms()
            while True:
                left = wait - ticks_diff(self.ticks_ms(), start)
                if left <= 0:
                    break
                data = self._recv(left)
                if data is None:
                    break
                try:
                    return self.dev.receive(data)
                except dg.DgramError:
                    continue  # stale, tampered or not ours: keep waiting
            wait *= 2
        raise WakeFailed("no reply over udp after %d tries" % (self.retries + 1))

    def _first(self):
        dev = self.dev
        if dev.has_context():
            try:
                self.report.resumed = True
                return self._exchange(lambda: dev.wake(False))
            except WakeFailed:
                self.report.resumed = False  # the gateway may have lost the context
        self.full = True
        for _ in range(3):
            msg = self._exchange(lambda: dev.wake(True))
            if msg is not None:
                self.report.forward_secret = dev.forward_secret
                return msg
            # RESYNC: the counter is now above the gateway's; wake again
        raise WakeFailed("the gateway kept resynchronising the wake counter")

    def run(self):
        st, rep, dev = self.st, self.report, self.dev
        rep.encrypted = True  # every datagram after the WAKE is encrypted
        msg = self._first()
        pending = st.with_state(DONE)  # answers from earlier wakes go first
        while True:
            ack, again = self.absorb(msg["items"], msg["more"], msg["revoked"], msg["twin"],
                                     msg["gateway_now_ms"])
            whole = len(ack) == len(msg["items"])  # all stored: the reply may be acknowledged
            pending = _unique(pending + again + self.run_pending())
            chunk, pending = self._split(pending)
            twin = st.twin_report() if st.twin["pending"] else None
            rv = st.twin["rv"]
            if not chunk and twin is None:
                if whole and (msg["items"] or msg["revoked"] or msg["twin"] or msg["more"]):
                    if msg["more"]:  # the gateway answers this ACK with the next batch
                        msg = self._exchange(lambda: dev.ack(None))
                        continue
                    self._out(dev.ack(None))  # the gateway stays silent: sleep
                return self._done()
            responses = {"items": [self._answer(r) for r in chunk], "twin": twin}
            if whole:
                msg = self._exchange(lambda: dev.ack(responses))
            else:
                msg = self._exchange(lambda: dev.send(responses))
            # a reply to a DATA carrying answers says they are stored at the gateway
            st.acked([r["request_id"] for r in responses["items"]])
            if twin is not None:
                st.twin_acked(rv)
            st.save()
            rep.delivered += len(chunk)
            if msg is None:
                raise WakeFailed("unexpected resync")

    def _done(self):
        self.report.sleep_s = self.duty_cycle_s
        self.report.twin_applied = self.st.twin["applied"]
        self.closed = True
        return self.report

    def _answer(self, rid):
        r = self.st.response(rid)
        if answer_size(r) > ANSWER_BUDGET:
            r = {"request_id": r["request_id"], "status": TOO_LARGE, "payload": b"",
                 "error": "answer too large for the datagram link"}
        return r

    def _split(self, rids):
        """(the answers one DATA carries, the rest)."""
        size = 0
        for i in range(len(rids)):
            n = answer_size(self._answer(rids[i]))
            if i and size + n > ANSWER_BUDGET - 64:  # room for a twin report
                return rids[:i], rids[i:]
            size += n
        return rids, []


def _unique(ids):
    seen = set()
    out = []
    for i in ids:
        if i not in seen:
            seen.add(i)
            out.append(i)
    return out
