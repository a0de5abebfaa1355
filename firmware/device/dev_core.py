"""One wake of the device program, sans-I/O (portable), and the backoff rule.

Theory of operation
-------------------
A port (CPython asyncio: firmware/runtime/device.py; MicroPython blocking
sockets: dev_mp.py) runs the duty cycle::

    WAKE -> connect out; Wake.start() (RESUME with the stored ticket, else HELLO)
         -> feed every read to Wake.feed(); write Wake.take() after each
         -> feed() returns True once BYE is queued: write it, close, SLEEP duty_cycle_s
         -> WakeFailed / socket error: SLEEP backoff_delay(failures, ...), failures += 1

A ticket the gateway refuses costs one immediate retry with a full handshake.

Inside a wake (docs/LINK_PROTOCOL.md "Data phase"): responses computed on an
earlier wake go first; each REQUESTS batch is stored durably and ACKed,
revocations are applied before anything runs, desired twin changes are applied
and reported, then the requests run in sequence order; each response is
persisted before it is sent. A request id already answered is answered again
from the store (at-least-once delivery, no second run). A request found
``running`` (a crash interrupted it) runs again if its method is read-only or
idempotent, and is answered INTERRUPTED otherwise: a mutating request runs at
most once. The device says BYE when the gateway has nothing more and every
RESPONSES frame it sent was ACKed.

Everything the device answers to one read (PROOF, ACK, RESPONSES, BYE) is
queued and taken in one write, so a full encrypted handshake costs two round
trips; a service that runs longer than ``EAGER_FLUSH_MS`` first has what is
queued sent through ``flush`` (PROOF must not wait past the gateway's deadline).
"""

from ..link.link_session import NEED_DATA, CLOSED, Established, Requests, Ack, Error, Bye, Responses
from ..link.link_device import (BAD_ARGUMENTS, EXPIRED, REVOKED, TOKEN_REFUSED, INTERRUPTED,
                                check_request, request_sequence)
from ..link.link_errors import LinkError
from ..link.link_wire import MAX_LINK_FRAME
from ..caplets.cap_errors import Revoked, TokenError
from .dev_state import STORED, RUNNING, DONE, ACKED, hexs
from .dev_store import StateTooLarge
from .dev_services import Call

RESPONSE_BATCH_BYTES = MAX_LINK_FRAME - 4096
EAGER_FLUSH_MS = 50
WAKE_TIMEOUT_S = 20
BACKOFF_BASE_S = 1
BACKOFF_CAP_S = 300
BACKOFF_MIN_CAP_S = 10
READ_SIZE = 1024  # bytes per socket read: bounded, whatever the gateway sends
TOO_LARGE_HERE = "request too large for this device's storage"


def backoff_delay(failures, duty_cycle_s, rand01, base=BACKOFF_BASE_S, cap=BACKOFF_CAP_S):
    """Full jitter: ``rand01 * min(cap', base * 2**failures)``, ``rand01`` in [0, 1).

    The cap follows the duty cycle (twice it, at least 10 s, at most ``cap``): a
    device that wakes every few seconds comes back within seconds of its gateway,
    one that sleeps for hours does not spin."""
    top = min(cap, max(BACKOFF_MIN_CAP_S, 2 * duty_cycle_s))
    return rand01 * min(top, base * 2 ** min(failures, 30))


class WakeFailed(Exception):
    """A wake ended without a clean BYE (transport, protocol or gateway error)."""

    def __init__(self, message, code=0):
        super().__init__(message)
        self.code = code
        self.resumed_with_ticket = False  # the failed attempt spent a ticket


class Report:
    """What one wake did."""

    def __init__(self):
        self.resumed = False
        self.forward_secret = False
        self.encrypted = False
        self.received = 0          # request items received (including redeliveries)
        self.executed = 0          # service functions run
        self.deduplicated = 0      # redeliveries answered from the store
        self.interrupted = 0       # answered INTERRUPTED after a crash
        self.delivered = 0         # responses ACKed by the gateway
        self.revoked = 0
        self.twin_applied = 0      # twin version applied at the end of the wake
        self.sleep_s = 0
        self.errors = []


class Wake:
    """The per-connection part of a wake: feed it bytes, take what to send.

    ``now_ms()``: wall clock, Unix epoch ms (the port corrects a 2000 epoch);
    ``ticks_ms()``: a monotonic ms counter; ``flush(bytes)``: sends queued
    bytes at once (eager flush before a slow service); ``on_twin(key, value)``:
    told each desired change applied (value: JSON text, None when deleted)."""

    def __init__(self, state, services, session, secret, now_ms, ticks_ms, duty_cycle_s,
                 flush=None, linger=False, on_twin=None, log=None):
        self.st = state
        self.services = services
        self.session = session
        self.secret = secret
        self.now_ms = now_ms
        self.ticks_ms = ticks_ms
        self.duty_cycle_s = duty_cycle_s
        self._flush = flush
        self.linger = linger
        self.on_twin = on_twin
        self.log = log
        self.report = Report()
        self.more = True            # until a REQUESTS says otherwise
        self.got_requests = False
        self.frames_sent = 0        # RESPONSES frames sent
        self.frames_acked = 0
        self.twin_frame = 0         # the frame number carrying the pending twin report (0: none)
        self.twin_rv = 0            # the reported-change count that report carried
        self.skew_ms = 0            # gateway clock - our clock
        self.out = bytearray()
        self.flight_t0 = 0
        self.closed = False

    # -- what the port calls --

    def start(self):
        self.out += self.session.initiate()
        return self.take()

    def take(self):
        data = bytes(self.out)
        self.out = bytearray()
        return data

    def idle(self):
        return self.got_requests and not self.more and self.frames_acked >= self.frames_sent

    def feed(self, data):
        """Handle a read; True once BYE is queued (take() it, then close)."""
        s = self.session
        self.flight_t0 = self.ticks_ms()
        try:
            s.receive_data(data)
            while True:
                event = s.next_event()
                self.out += s.data_to_send()
                if event is NEED_DATA:
                    break
                if event is CLOSED:
                    raise WakeFailed("session closed")
                self.handle(event)
        except LinkError as exc:
            self.out += s.data_to_send()  # e.g. PROOF, then our ERROR
            raise WakeFailed("link error: %s" % (exc,))
        if self.idle() and not self.linger:
            self.bye()
            return True
        return False

    def bye(self):
        self.report.sleep_s = self.duty_cycle_s
        self.report.twin_applied = self.st.twin["applied"]
        self.out += self.session.send(Bye(self.duty_cycle_s))
        self.closed = True

    # -- events --

    def handle(self, event):
        st, rep = self.st, self.report
        if isinstance(event, Established):
            rep.resumed = event.resumed
            rep.forward_secret = event.forward_secret
            rep.encrypted = event.encrypt
            if event.ticket_id:
                st.set_ticket(event.ticket_id, event.ticket_secret,
                              self.now_ms() + event.ticket_ttl_s * 1000)
                st.save()
            self.send_responses(st.with_state(DONE))  # earlier wakes' answers first
        elif isinstance(event, Requests):
            self.on_requests(event)
        elif isinstance(event, Ack):
            self.frames_acked += 1
            st.acked(list(event.ids))
            if self.twin_frame and self.frames_acked >= self.twin_frame:
                st.twin_acked(self.twin_rv)
                self.twin_frame = 0
            st.save()
            rep.delivered += len(event.ids)
        elif isinstance(event, Error):
            raise WakeFailed("gateway error %d: %s" % (event.code, event.reason), event.code)

    def on_requests(self, event):
        # the batch is stored durably by absorb(); the frame's copy need not stay on the
        # heap while the requests run (a board's heap is the budget)
        items, event.items = event.items, ()
        ack, again = self.absorb(items, event.more, event.revoked, event.twin,
                                 event.gateway_now_ms)
        items = None
        if ack:
            self.out += self.session.send(Ack(ack))
        done = self.run_pending()
        self.send_responses(again + done)

    def absorb(self, items, more, revoked, twin, gateway_now_ms):
        """Take one batch of work (either link): clock skew, revocations, twin,
        then each request stored durably. Returns (ids to acknowledge, ids
        already answered whose stored answers go again); requests beyond the
        store's bound are neither stored nor in the first list."""
        st, rep = self.st, self.report
        self.got_requests = True
        self.more = more
        if gateway_now_ms:
            self.skew_ms = gateway_now_ms - self.now_ms()
        if revoked:  # pruned by the gateway's clock: a board's may be unset
            st.revoke(list(revoked), (self.now_ms() + self.skew_ms) // 1000)
            rep.revoked += len(revoked)
        if twin:
            st.apply_twin(twin, self.on_twin)
        now = self.now_ms()
        ack, again, fresh = [], [], []
        for item in items:
            rep.received += 1
            rid = hexs(item["request_id"])
            entry = st.entries.get(rid)
            if entry is None:
                if st.open_count() >= st.max_entries:
                    continue  # not stored, not ACKed: the gateway keeps it for later
                st.store_request(item, request_sequence(item), now)
                fresh.append((len(item["args"]) + len(item["request_token"]), rid))
            elif entry["state"] in (DONE, ACKED):
                again.append(rid)
                rep.deduplicated += 1
            ack.append(item["request_id"])
        again += self._save_fitting(fresh)  # stored durably before the ACK says so
        return ack, again

    def _save_fitting(self, fresh):
        """Save the state; when the requests just stored do not fit the device's slot, the
        largest of them are answered "too large" (their arguments dropped) until it does:
        a request is refused, never the device stopped (it would meet the same requests at
        every wake). ``fresh``: (size, id) of this batch's new requests. Returns the ids
        answered so (their answers go with this wake's)."""
        fresh = sorted(fresh)
        refused = []
        while True:
            try:
                self.st.save()
                return refused
            except StateTooLarge:
                if not fresh:
                    raise WakeFailed("device state too large for its slot")
                rid = fresh.pop()[1]
                self.st.finish(rid, BAD_ARGUMENTS, error=TOO_LARGE_HERE)
                refused.append(rid)

    def run_pending(self):
        """Run stored requests (and ones a crash interrupted) in sequence order."""
        out = []
        for rid in self.st.with_state(STORED, RUNNING):
            if self.out and self._flush is not None \
                    and self.ticks_ms() - self.flight_t0 > EAGER_FLUSH_MS:
                self._flush(self.take())
            self.execute(rid)
            out.append(rid)
        return out

    def _finish(self, rid, status, error):
        self.st.finish(rid, status, error=error)
        self.st.save()

    def execute(self, rid):
        st = self.st
        entry = st.entries[rid]
        item = st.request(rid)
        now_ms = self.now_ms() + self.skew_ms
        interrupted = entry["state"] == RUNNING
        if item["expires_at_ms"] and item["expires_at_ms"] <= now_ms:
            return self._finish(rid, EXPIRED, "expired before it ran")
        try:
            seq = check_request(item, self.secret, now_s=now_ms // 1000,
                                last_sequence=None if interrupted else st.last_sequence,
                                revoked=st.revoked_set())
        except TokenError as exc:
            if self.log:
                self.log("request %s refused: %s: %s" % (rid[:12], type(exc).__name__, exc))
            return self._finish(rid, REVOKED if isinstance(exc, Revoked) else TOKEN_REFUSED,
                                "%s: %s" % (type(exc).__name__, exc))
        spec = self.services.method(item["service"], item["method"])
        if interrupted and spec is not None and spec.mutating and not spec.idempotent:
            self.report.interrupted += 1
            return self._finish(rid, INTERRUPTED, "interrupted by a device restart; outcome unknown")
        entry["state"] = RUNNING
        st.last_sequence = max(st.last_sequence or 0, seq)
        st.save()  # durable before the side effects start
        status, payload, error = self.services.call(item["service"], item["method"], item["args"],
                                                    Call(item["request_id"], self.now_ms() / 1000))
        self.report.executed += 1
        st.finish(rid, status, payload, error)
        st.save()

    def send_responses(self, rids):
        """RESPONSES frames for these ids, each under the frame limit; the first
        carries the twin report while one is pending and not yet in flight."""
        st = self.st
        batch = []
        size = 0
        seen = set()
        for rid in rids:
            if rid in seen:
                continue
            seen.add(rid)
            r = st.response(rid)
            cost = len(r["payload"]) + len(r["error"]) + 40
            if batch and size + cost > RESPONSE_BATCH_BYTES:
                self._send_batch(batch)
                batch, size = [], 0
            batch.append(r)
            size += cost
        if batch or (st.twin["pending"] and not self.twin_frame):
            self._send_batch(batch)

    def _send_batch(self, batch):
        twin = None
        if self.st.twin["pending"] and not self.twin_frame:
            twin = self.st.twin_report()
        self.out += self.session.send(Responses(batch, twin))
        self.frames_sent += 1
        if twin is not None:
            self.twin_frame = self.frames_sent
            self.twin_rv = self.st.twin["rv"]
