"""A listener and its queues, one rule per test (K tcp_rcv_state_process() case TCP_LISTEN,
tcp_conn_request(), tcp_check_req(), inet_csk_listen_stop()). Segments are injected straight
into one model host, as the probe scripts inject them into the kernel over TUN; each rule is a
probe script too (src/timewait/lab/probe/scripts, names in the docstrings)."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from timewait.config import KernelConfig
from timewait.model import counters as C
from timewait.model.events import BrokenPipe, Closed, ConnectionReset
from timewait.model.host import Host
from timewait.model.rtt import HZ
from timewait.model.segment import Flags, Segment
from timewait.model.seq import seq_add
from timewait.model.states import TcpState
from timewait.model.timerwheel import mean_fire_delay
from timewait.units import MS, SEC

F = Flags
S = TcpState
HOST = "192.0.2.1"
PEER = "192.0.2.2"
PORT = 8080
NO_TS = KernelConfig(tcp_timestamps=0)


@dataclass
class Peer:
    """A scripted remote end: one source port, its own sequence numbers."""

    host: Host
    sport: int
    isn: int = 1000

    def seg(self, flags: Flags, seq: int = 1, ack: int = 0, data: bytes = b"") -> Segment:
        """`seq` relative to our ISN (1 = the first byte after the SYN); `ack` absolute."""
        return Segment(
            src=PEER,
            sport=self.sport,
            dst=HOST,
            dport=PORT,
            seq=seq_add(self.isn, seq),
            ack=ack,
            flags=flags,
            payload=data,
        )

    def send(self, seg: Segment, now: int) -> list[Segment]:
        self.host.receive(seg, now)
        return self.host.segments_to_send(now)

    def connect(self, now: int) -> Segment:
        """SYN in, the SYN-ACK out; returns the SYN-ACK."""
        (synack,) = self.send(self.seg(F.SYN, seq=0), now)
        assert synack.flags == F.SYN | F.ACK
        return synack

    def handshake(self, now: int) -> Segment:
        synack = self.connect(now)
        assert self.send(self.seg(F.ACK, ack=seq_add(synack.seq, 1)), now) == []
        return synack


def server(backlog: int = 128) -> tuple[Host, int]:
    h = Host(addrs=[HOST], rng=random.Random(1), config=NO_TS)
    fd = h.socket()
    h.bind(fd, "0.0.0.0", PORT, 0)
    h.listen(fd, 0, backlog=backlog)
    h.segments_to_send(0)
    return h, fd


def run_timers(h: Host, until: int) -> list[tuple[int, Segment]]:
    out: list[tuple[int, Segment]] = []
    while (t := h.next_deadline()) is not None and t <= until:
        h.on_timer(t)
        out += [(t, s) for s in h.segments_to_send(t)]
    return out


def test_listener_answers_an_ack_with_a_reset() -> None:
    """K tcp_rcv_state_process() TCP_LISTEN: "if (th->ack) return 1" -> tcp_v4_send_reset()
    with SEQ = SEG.ACK (probe listen-ack-gets-rst)."""
    h, _ = server()
    (rst,) = Peer(h, 40000).send(Peer(h, 40000).seg(F.ACK, ack=777), 0)
    assert rst.flags == F.RST and rst.seq == 777


def test_listener_drops_rst_bare_segments_and_syn_fin() -> None:
    """K tcp_rcv_state_process() TCP_LISTEN: an RST is dropped, a segment without SYN is dropped
    (SKB_DROP_REASON_TCP_FLAGS), SYN+FIN is dropped by tcp_v4_rcv()'s flag check (probes
    listen-rst-dropped, listen-no-ack-dropped, listen-syn-fin-dropped)."""
    h, _ = server()
    p = Peer(h, 40000)
    assert p.send(p.seg(F.RST), 0) == []
    assert p.send(p.seg(F.NONE, data=b"x"), 0) == []
    assert p.send(p.seg(F.SYN | F.FIN, seq=0), 0) == []
    assert h.counters[C.OUT_RSTS] == 0 and not list(h.connections())


def test_full_accept_queue_drops_a_new_syn() -> None:
    """K tcp_conn_request(): sk_acceptq_is_full() (queue length > backlog) drops the SYN and
    counts ListenOverflows and ListenDrops (probe accept-queue-full-drops-syn)."""
    h, _ = server(backlog=0)
    Peer(h, 40000).handshake(0)
    p = Peer(h, 40001)
    assert p.send(p.seg(F.SYN, seq=0), 0) == []
    assert h.counters[C.LISTEN_OVERFLOWS] == 1 and h.counters[C.LISTEN_DROPS] == 1


def test_full_accept_queue_drops_the_final_ack_and_the_synack_is_resent() -> None:
    """K tcp_check_req(): syn_recv_sock() fails on a full accept queue ("listen_overflow"), the
    ACK is dropped and the request's timer resends the SYN-ACK after 1 s; once accept() makes
    room the next ACK completes it (probe accept-queue-full-drops-final-ack)."""
    h, lfd = server(backlog=1)
    Peer(h, 40000).handshake(0)
    c = Peer(h, 40002)
    c_synack = c.connect(10 * MS)
    Peer(h, 40001).handshake(20 * MS)
    assert c.send(c.seg(F.ACK, ack=seq_add(c_synack.seq, 1)), 30 * MS) == []
    assert h.counters[C.LISTEN_OVERFLOWS] == 1
    resent = run_timers(h, 1100 * MS)
    assert [(t, s.flags, s.dport) for t, s in resent] == [
        (10 * MS + mean_fire_delay(1 * SEC, HZ), F.SYN | F.ACK, 40002)
    ]
    assert h.accept(lfd) is not None
    assert c.send(c.seg(F.ACK, ack=seq_add(c_synack.seq, 1)), 1200 * MS) == []
    assert h.counters[C.LISTEN_OVERFLOWS] == 1
    assert h.accept(lfd) is not None and h.accept(lfd) is not None


def test_request_queue_over_backlog_drops_syns_without_syncookies() -> None:
    """K tcp_conn_request(): with more requests than the backlog Linux sends SYN cookies
    (tcp_syncookies = 1); the model has none and drops the SYN as tcp_syncookies = 0 does --
    a listed departure in the README."""
    h, _ = server(backlog=1)
    Peer(h, 40000).connect(0)
    Peer(h, 40001).connect(0)
    p = Peer(h, 40002)
    assert p.send(p.seg(F.SYN, seq=0), 0) == []
    assert h.counters[C.LISTEN_DROPS] == 1 and h.counters[C.LISTEN_OVERFLOWS] == 0


def test_rst_in_window_of_a_request_is_an_embryonic_reset() -> None:
    """K tcp_check_req(): an RST (or a new SYN) in the window of a request socket kills it and
    counts EmbryonicRsts; nothing is sent for the RST (probe synrecv-rst-removes-request)."""
    h, _ = server()
    p = Peer(h, 40000)
    p.connect(0)
    assert p.send(p.seg(F.RST, seq=1), 1 * MS) == []
    assert h.counters[C.EMBRYONIC_RSTS] == 1
    assert not list(h.connections())


def test_retransmitted_syn_gets_the_synack_again() -> None:
    """K tcp_check_req(): a retransmitted SYN (same ISN) makes the request resend its SYN-ACK
    (inet_rtx_syn_ack()), unchanged (probe synrecv-syn-retransmit-resends-synack)."""
    h, _ = server()
    p = Peer(h, 40000)
    first = p.connect(0)
    (again,) = p.send(p.seg(F.SYN, seq=0), 500 * MS)
    assert (again.flags, again.seq, again.ack) == (first.flags, first.seq, first.ack)


def test_reset_child_stays_in_the_accept_queue() -> None:
    """A connection reset before accept() is still returned by accept() (K: the child stays in
    the queue, closed; the application reads ECONNRESET) (probe accept-reset-before-accept)."""
    h, lfd = server()
    p = Peer(h, 40000)
    p.handshake(0)
    assert p.send(p.seg(F.RST, seq=1), 1 * MS) == []
    fd = h.accept(lfd)
    assert fd is not None and h.state(fd) is S.CLOSED
    assert any(isinstance(e, ConnectionReset) for e in h.events(fd))


def test_closing_a_listener_resets_its_queued_children() -> None:
    """K inet_csk_listen_stop(): close() of a listener aborts every child not yet accepted, each
    with an RST (probe listen-close-resets-queued)."""
    h, lfd = server()
    synack = Peer(h, 40000).handshake(0)
    h.close(lfd, 1 * MS)
    (rst,) = h.segments_to_send(1 * MS)
    assert rst.flags & F.RST and rst.seq == seq_add(synack.seq, 1)


def test_rst_after_the_peers_fin_reports_a_broken_pipe() -> None:
    """K tcp_reset(): an acceptable RST in CLOSE_WAIT reports EPIPE, elsewhere ECONNRESET
    (probe close-rst-in-close-wait-epipe)."""
    h, lfd = server()
    p = Peer(h, 40000)
    p.handshake(0)
    fd = h.accept(lfd)
    assert fd is not None
    p.send(p.seg(F.FIN | F.ACK, seq=1, ack=h._conn(fd).snd_nxt), 1 * MS)
    assert h.state(fd) is S.CLOSE_WAIT
    h.events(fd)
    p.send(p.seg(F.RST, seq=2), 2 * MS)
    assert [type(e) for e in h.events(fd)] == [BrokenPipe, Closed]


def test_request_checks_an_rst_before_its_ack() -> None:
    """6.18.44 (the kernel is the judge; the 6.18.19 tcp_check_req() checks the ACK first): an
    RST at rcv_nxt resets the request whatever it acknowledges; elsewhere in the window it
    draws a challenge ACK (RFC 5961 §3.2) and the request stays; outside it is dropped
    (probes synrecv-rst-checked-before-ack, synrecv-rst-wrong-ack-in-window-challenge)."""
    h, _ = server()
    p = Peer(h, 40000)
    p.connect(0)
    (ch,) = p.send(p.seg(F.RST | F.ACK, seq=11, ack=12345), 10 * MS)
    assert ch.flags == F.ACK and h.counters[C.CHALLENGE_ACK] == 1
    assert p.send(p.seg(F.RST | F.ACK, seq=100_000, ack=12345), 700 * MS) == []
    assert p.send(p.seg(F.RST | F.ACK, seq=1, ack=12345), 800 * MS) == []
    assert h.counters[C.EMBRYONIC_RSTS] == 1 and not list(h.connections())


def test_request_counts_paws_rejects() -> None:
    """K tcp_check_req(): a segment with an old TSval is answered with an ACK and counted in
    PAWSEstab; an RST is dropped silently and counted the same (probes synrecv-paws-counted,
    synrecv-rst-paws-counted)."""
    h = Host(addrs=[HOST], rng=random.Random(1), config=KernelConfig())
    fd = h.socket()
    h.bind(fd, "0.0.0.0", PORT, 0)
    h.listen(fd, 0)
    p = Peer(h, 40000)
    h.receive(replace(p.seg(F.SYN, seq=0), tsval=100, tsecr=0), 0)
    (synack,) = h.segments_to_send(0)
    h.receive(replace(p.seg(F.ACK, ack=seq_add(synack.seq, 1)), tsval=53, tsecr=0), 10 * MS)
    (ack,) = h.segments_to_send(10 * MS)
    assert ack.flags == F.ACK and h.counters[C.PAWS_ESTAB] == 1
    h.receive(replace(p.seg(F.RST), tsval=53, tsecr=0), 20 * MS)
    assert h.segments_to_send(20 * MS) == [] and h.counters[C.PAWS_ESTAB] == 2
    assert len(list(h.connections())) == 1


def test_child_starts_with_a_fresh_out_of_window_rate_limit() -> None:
    """K tcp_create_openreq_child(): the new socket is a clone of the listener, so the request's
    last out-of-window ACK does not rate-limit the child's first challenge ACK (probe
    synrecv-child-fresh-rate-limit)."""
    h, lfd = server()
    p = Peer(h, 40000)
    synack = p.connect(0)
    assert len(p.send(p.seg(F.RST, seq=11), 10 * MS)) == 1  # challenge ACK from the request
    assert p.send(p.seg(F.ACK, ack=seq_add(synack.seq, 1)), 10 * MS) == []
    assert h.accept(lfd) is not None
    (ch,) = p.send(p.seg(F.PSH | F.ACK, ack=seq_add(synack.seq, 2), data=b"x" * 10), 10 * MS)
    assert ch.flags == F.ACK and h.counters[C.CHALLENGE_ACK] == 2
