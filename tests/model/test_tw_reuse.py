"""ref 3: tcp_twsk_unique() (K net/ipv4/tcp_ipv4.c), one test per condition, then on a host."""

from __future__ import annotations

import random

import pytest

from timewait.config import KernelConfig
from timewait.errors import AddressNotAvailable
from timewait.model import counters as C
from timewait.model.host import Host
from timewait.model.minisock import MiniSocket, tw_unique
from timewait.model.segment import FourTuple, is_loopback
from timewait.model.states import TcpState
from timewait.model.wire import Wire
from timewait.units import MS, SEC

T0 = 500 * SEC
REMOTE = FourTuple("198.18.0.1", 40000, "198.18.0.2", 80)
LOOP = FourTuple("127.0.0.1", 40000, "127.0.0.1", 80)


def tw(ft: FourTuple = REMOTE, **kw: object) -> MiniSocket:
    fields: dict[str, object] = dict(
        tuple=ft, substate=TcpState.TIME_WAIT, timeout=60 * SEC, now=T0, rcv_nxt=5000,
        snd_nxt=9000, rcv_wnd=65535, ts_recent=777, ts_recent_stamp=T0, ts_offset=0,
    )  # fmt: skip
    fields.update(kw)
    return MiniSocket.create(**fields)


def cfg(**kw: object) -> KernelConfig:
    return KernelConfig().replace(**kw)


def test_reuse_1_after_delay_takes_over_with_isn_snd_nxt_plus_65537() -> None:
    """Conditions 1-4 hold: write_seq = tw_snd_nxt + 65535 + 2, ts_recent copied (ref 3)."""
    got = tw_unique(tw(), config=cfg(tcp_tw_reuse=1), now=T0 + 1001 * MS, autobind=True)
    assert got == (9000 + 65537, 777, T0)


def test_reuse_delay_is_strict_time_after32() -> None:
    """now_ms must be strictly after entry_stamp + delay: at exactly +1000 ms, no (6.14+)."""
    assert tw_unique(tw(), config=cfg(tcp_tw_reuse=1), now=T0 + 1000 * MS, autobind=True) is None
    assert tw_unique(tw(), config=cfg(tcp_tw_reuse=1), now=T0 + 1001 * MS, autobind=True)


def test_reuse_0_never_for_autobind() -> None:
    assert tw_unique(tw(), config=cfg(tcp_tw_reuse=0), now=T0 + 50 * SEC, autobind=True) is None


def test_reuse_2_only_for_loopback_addresses() -> None:
    """tcp_tw_reuse=2: loopback src or dst (127/8, ::1, ::ffff:127/104) only (Linux 4.18)."""
    late = T0 + 5 * SEC
    assert tw_unique(tw(REMOTE), config=cfg(tcp_tw_reuse=2), now=late, autobind=True) is None
    assert tw_unique(tw(LOOP), config=cfg(tcp_tw_reuse=2), now=late, autobind=True) is not None
    assert is_loopback("::1") and is_loopback("::ffff:127.0.0.5") and is_loopback("127.3.2.1")
    assert not is_loopback("198.18.0.1") and not is_loopback("::ffff:198.18.0.1")


def test_no_timestamps_seen_means_no_reuse_whatever_the_sysctl() -> None:
    """tw_ts_recent_stamp == 0 -> 0, for autobind and for bound sockets (Lab E7b/E7c)."""
    t = tw(ts_recent_stamp=None)
    assert tw_unique(t, config=cfg(tcp_tw_reuse=1), now=T0 + 5 * SEC, autobind=True) is None
    assert tw_unique(t, config=cfg(tcp_tw_reuse=1), now=T0 + 5 * SEC, autobind=False) is None


def test_fin_wait2_minisocket_never_reused_by_autobind() -> None:
    """`if (tw->tw_substate == TCP_FIN_WAIT2) reuse = 0;`"""
    t = tw(substate=TcpState.FIN_WAIT_2)
    assert tw_unique(t, config=cfg(tcp_tw_reuse=1), now=T0 + 5 * SEC, autobind=True) is None


def test_bound_socket_ignores_sysctl_delay_and_fin_wait2_rule() -> None:
    """twp == NULL (explicit bind): only ts_recent_stamp matters (ref 3 last bullet, Lab E7)."""
    for t in (tw(), tw(substate=TcpState.FIN_WAIT_2)):
        assert tw_unique(t, config=cfg(tcp_tw_reuse=0), now=T0, autobind=False) is not None


def test_isn_wraps_and_skips_zero() -> None:
    """seq = tw_snd_nxt + 65535 + 2; `if (!seq) seq = 1;`"""
    t = tw(snd_nxt=(1 << 32) - 65537)
    got = tw_unique(t, config=cfg(tcp_tw_reuse=1), now=T0 + 2 * SEC, autobind=True)
    assert got is not None and got[0] == 1


# -- on a host over loopback ---------------------------------------------------------------


def loopback_host(**kw: object) -> tuple[Host, Wire]:
    h = Host(name="lo", addrs=[], config=cfg(**kw), rng=random.Random(3))
    return h, Wire(h, delay=10_000)


def loop_request(h: Host, w: Wire, lfd: int) -> int:
    fd = h.socket()
    h.connect(fd, "127.0.0.1", 80, w.now)
    w.run(w.now + 5 * MS)
    sfd = h.accept(lfd)
    assert sfd is not None
    conn = h._sock(fd).conn
    assert conn is not None
    h.close(fd, w.now)
    w.run(w.now + 5 * MS)
    h.close(sfd, w.now)
    w.run(w.now + 5 * MS)
    return conn.tuple.lport


def test_default_reuse_2_recycles_loopback_time_wait_after_one_second() -> None:
    """Lab E4c/E4d on loopback with the defaults: immediately EADDRNOTAVAIL, after 1.1 s the
    TIME_WAIT is taken over and TWRecycled counts it."""
    h, w = loopback_host(ip_local_port_range=(40000, 40000))
    lfd = h.socket()
    h.bind(lfd, "127.0.0.1", 80, 0)
    h.listen(lfd, 0)
    assert loop_request(h, w, lfd) == 40000
    assert h.count_state(TcpState.TIME_WAIT) == 1
    with pytest.raises(AddressNotAvailable):
        h.connect(h.socket(), "127.0.0.1", 80, w.now)
    w.run(w.now + 1100 * MS)
    assert loop_request(h, w, lfd) == 40000
    assert h.counters[C.TW_RECYCLED] == 1


def test_scan_takes_first_reusable_time_wait_without_preferring_free_ports() -> None:
    """__inet_hash_connect() accepts the first candidate that is free *or* reusable (ref 3):
    with range 40000-40001 the even pass meets 40000's reusable TIME_WAIT before free 40001."""
    h, w = loopback_host(ip_local_port_range=(40000, 40001), tcp_tw_reuse=1)
    lfd = h.socket()
    h.bind(lfd, "127.0.0.1", 80, 0)
    h.listen(lfd, 0)
    assert loop_request(h, w, lfd) == 40000
    w.run(w.now + 2 * SEC)
    assert loop_request(h, w, lfd) == 40000
    assert h.counters[C.TW_RECYCLED] == 1
