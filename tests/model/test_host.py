"""Host-level rules: two model hosts over an in-memory wire, checked against ref sections 1-9 and
the lab measurements (docs/lab-6.18.44.txt, re-run of linux-timewait-lab.py on this kernel)."""

from __future__ import annotations

import pytest

from timewait.config import RFC9293, KernelConfig
from timewait.errors import AddressInUse, AddressNotAvailable, NotConnected
from timewait.model import counters as C
from timewait.model.host import Host, SockOpt
from timewait.model.minisock import MiniSocket
from timewait.model.segment import FourTuple
from timewait.model.states import FD_OBJECT_BYTES, FULL_SOCK_BYTES, TW_SOCK_BYTES, TcpState

from .host_helpers import (
    CLIENT_IP,
    MS,
    PORT,
    SEC,
    SERVER_IP,
    SERVER_IP_2,
    close_pair,
    listen,
    make_net,
    one_request,
    open_pair,
)


def tw_of(host: Host) -> list[MiniSocket]:
    return [tw for tw in host.minisockets() if tw.substate is TcpState.TIME_WAIT]


# -- the classic story, end to end ---------------------------------------------------------


def test_two_hosts_handshake_data_close_time_wait_on_active_closer_only() -> None:
    """ref 1.1: the active closer ends in TIME_WAIT, the passive closer goes straight to CLOSED."""
    net = make_net()
    lfd = listen(net.server)
    cfd, sfd = open_pair(net, lfd)
    assert net.client.state(cfd) is TcpState.ESTABLISHED
    assert net.server.state(sfd) is TcpState.ESTABLISHED
    net.client.send(cfd, b"hello", net.now)
    net.settle()
    assert net.server.recv(sfd) == b"hello"
    close_pair(net, net.client, cfd, net.server, sfd)
    assert len(tw_of(net.client)) == 1
    assert net.server.count_state(TcpState.TIME_WAIT) == 0
    assert sum(1 for _ in net.server.connections()) == 0
    assert net.client.counters[C.TW] == 1


def test_descriptor_reads_closed_once_a_time_wait_minisocket_replaced_it() -> None:
    """K tcp_time_wait() ends in tcp_done(): with the descriptor still open (shutdown, not close)
    the full socket is CLOSED once the minisocket holds the four-tuple, and calls on the
    descriptor leave that minisocket and its 60 s timer alone: shutdown() fails with ENOTCONN
    (K inet_shutdown(), case TCP_CLOSE; probe close-shutdown-after-reset-enotconn)."""
    net = make_net()
    lfd = listen(net.server)
    cfd, sfd = open_pair(net, lfd)
    net.client.shutdown(cfd, net.now)
    net.settle()
    net.server.close(sfd, net.now)
    net.settle()
    assert len(tw_of(net.client)) == 1
    assert net.client.state(cfd) is TcpState.CLOSED
    with pytest.raises(NotConnected):
        net.client.shutdown(cfd, net.now)
    net.client.close(cfd, net.now)
    assert len(tw_of(net.client)) == 1
    net.run(60 * SEC)
    assert tw_of(net.client) == [] and net.client.tw_count == 0


def test_time_wait_ends_after_60s_of_model_time() -> None:
    """TCP_TIMEWAIT_LEN = 60 s (include/net/tcp.h): still there at 59.9 s, gone at 60 s."""
    net = make_net()
    lfd = listen(net.server)
    one_request(net, lfd)
    (tw,) = tw_of(net.client)
    created = tw.expires - 60 * SEC
    net.wire.run(created + 60 * SEC - 100 * MS)
    assert net.client.tw_count == 1
    net.wire.run(created + 60 * SEC)
    assert net.client.tw_count == 0
    assert net.client.ports.holders(tw.tuple.lport) == ()


def test_rfc9293_profile_holds_time_wait_240s() -> None:
    """RFC 9293 §3.6.1 MUST-13 with MSL = 2 min (§3.4.2): 240 s."""
    net = make_net(profile=RFC9293)
    lfd = listen(net.server)
    one_request(net, lfd)
    (tw,) = tw_of(net.client)
    net.wire.run(tw.expires - 1)
    assert net.client.tw_count == 1
    net.wire.run(tw.expires)
    assert net.client.tw_count == 0


def test_server_closing_first_moves_time_wait_to_server() -> None:
    """ref 12.1: who closes first decides where TIME_WAIT lands; server-side TW holds no
    ephemeral port of the client."""
    net = make_net()
    lfd = listen(net.server)
    one_request(net, lfd, client_closes=False)
    assert net.client.tw_count == 0
    (tw,) = tw_of(net.server)
    assert tw.tuple.lport == PORT


def test_same_four_tuple_reopens_through_server_time_wait_by_newer_tsval() -> None:
    """ref 1.3/1.6: a SYN with a newer TSval to a server-side TIME_WAIT is accepted (TCP_TW_SYN),
    the minisocket is killed and the new connection's ISN is tw_snd_nxt + 65537."""
    net = make_net()
    lfd = listen(net.server)
    cfd = net.client.socket()
    net.client.setsockopt(cfd, SockOpt.SO_REUSEADDR, 1)
    net.client.bind(cfd, CLIENT_IP, 45000, net.now)
    net.client.connect(cfd, SERVER_IP, PORT, net.now)
    net.settle()
    sfd = net.server.accept(lfd)
    assert sfd is not None
    close_pair(net, net.server, sfd, net.client, cfd)
    (tw,) = tw_of(net.server)
    expected_isn = (tw.snd_nxt + 65537) & 0xFFFFFFFF
    net.run(2 * SEC)
    cfd2 = net.client.socket()
    net.client.setsockopt(cfd2, SockOpt.SO_REUSEADDR, 1)
    net.client.bind(cfd2, CLIENT_IP, 45000, net.now)
    net.client.connect(cfd2, SERVER_IP, PORT, net.now)
    net.settle()
    sfd2 = net.server.accept(lfd)
    assert sfd2 is not None
    assert net.server.state(sfd2) is TcpState.ESTABLISHED
    assert net.server.tw_count == 0
    conn = net.server._sock(sfd2).conn
    assert conn is not None and conn.snd_una == (expected_isn + 1) & 0xFFFFFFFF


# -- tcp_tw_reuse (ref 3) -------------------------------------------------------------------


@pytest.fixture
def one_port() -> KernelConfig:
    return KernelConfig(ip_local_port_range=(40000, 40000))


def test_tw_reuse_0_blocks_reconnect_while_time_wait_lives(one_port: KernelConfig) -> None:
    """tcp_tw_reuse=0: the only port's four-tuple is in TIME_WAIT -> EADDRNOTAVAIL (ref 7.2.8)."""
    net = make_net(client_config=one_port.replace(tcp_tw_reuse=0))
    lfd = listen(net.server)
    one_request(net, lfd)
    net.run(5 * SEC)
    with pytest.raises(AddressNotAvailable):
        net.client.connect(net.client.socket(), SERVER_IP, PORT, net.now)
    assert net.client.counters[C.TW_RECYCLED] == 0


def test_tw_reuse_1_takes_over_after_the_delay(one_port: KernelConfig) -> None:
    """tcp_twsk_unique(): reuse=1 with timestamps, strictly after entry_stamp + 1000 ms
    (ref 3, Lab E4c/E4d: immediate -> EADDRNOTAVAIL, +1.1 s -> OK, TWRecycled+1)."""
    net = make_net(client_config=one_port.replace(tcp_tw_reuse=1))
    lfd = listen(net.server)
    one_request(net, lfd)
    with pytest.raises(AddressNotAvailable):
        net.client.connect(net.client.socket(), SERVER_IP, PORT, net.now)
    net.run(1100 * MS)
    fd = net.client.socket()
    net.client.connect(fd, SERVER_IP, PORT, net.now)
    assert net.client.counters[C.TW_RECYCLED] == 1
    assert net.client.tw_count == 0
    net.settle()
    assert net.client.state(fd) is TcpState.ESTABLISHED


def test_tw_reuse_delay_3000_waits_longer(one_port: KernelConfig) -> None:
    """tcp_tw_reuse_delay=3000 (6.14+): +1.1 s still EADDRNOTAVAIL, +3.3 s OK (Lab E4e/E4f)."""
    net = make_net(client_config=one_port.replace(tcp_tw_reuse=1, tcp_tw_reuse_delay=3000))
    lfd = listen(net.server)
    one_request(net, lfd)
    net.run(1100 * MS)
    with pytest.raises(AddressNotAvailable):
        net.client.connect(net.client.socket(), SERVER_IP, PORT, net.now)
    net.run(2200 * MS)
    net.client.connect(net.client.socket(), SERVER_IP, PORT, net.now)
    assert net.client.counters[C.TW_RECYCLED] == 1


def test_tw_reuse_2_is_loopback_only(one_port: KernelConfig) -> None:
    """tcp_tw_reuse=2 (default): a TIME_WAIT toward a non-loopback peer is never reused."""
    net = make_net(client_config=one_port.replace(tcp_tw_reuse=2))
    lfd = listen(net.server)
    one_request(net, lfd)
    net.run(5 * SEC)
    with pytest.raises(AddressNotAvailable):
        net.client.connect(net.client.socket(), SERVER_IP, PORT, net.now)


def test_tw_reuse_needs_timestamps(one_port: KernelConfig) -> None:
    """tw_ts_recent_stamp == 0 -> no reuse whatever the sysctl (ref 3 cond. 3, Lab E7c)."""
    cfg = one_port.replace(tcp_tw_reuse=1, tcp_timestamps=0)
    net = make_net(client_config=cfg)
    lfd = listen(net.server)
    one_request(net, lfd)
    net.run(5 * SEC)
    with pytest.raises(AddressNotAvailable):
        net.client.connect(net.client.socket(), SERVER_IP, PORT, net.now)


def test_bound_socket_takes_over_time_wait_ignoring_tw_reuse() -> None:
    """Explicit bind(port) + connect(): tcp_twsk_unique() with twp == NULL takes the TIME_WAIT
    as soon as timestamps were seen, reuse=0 notwithstanding (ref 3 last bullet, Lab E7)."""
    net = make_net(client_config=KernelConfig(tcp_tw_reuse=0))
    lfd = listen(net.server)
    fd = net.client.socket()
    net.client.setsockopt(fd, SockOpt.SO_REUSEADDR, 1)
    net.client.bind(fd, CLIENT_IP, 45000, net.now)
    net.client.connect(fd, SERVER_IP, PORT, net.now)
    net.settle()
    sfd = net.server.accept(lfd)
    assert sfd is not None
    close_pair(net, net.client, fd, net.server, sfd)
    assert net.client.tw_count == 1
    fd2 = net.client.socket()
    net.client.setsockopt(fd2, SockOpt.SO_REUSEADDR, 1)
    net.client.bind(fd2, CLIENT_IP, 45000, net.now)
    net.client.connect(fd2, SERVER_IP, PORT, net.now)
    assert net.client.counters[C.TW_RECYCLED] == 1
    net.settle()
    assert net.client.state(fd2) is TcpState.ESTABLISHED


def test_bound_socket_without_timestamps_gets_eaddrnotavail() -> None:
    """Same with tcp_timestamps=0: no takeover, EADDRNOTAVAIL at connect (Lab E7b)."""
    net = make_net(client_config=KernelConfig(tcp_tw_reuse=0, tcp_timestamps=0))
    lfd = listen(net.server)
    fd = net.client.socket()
    net.client.setsockopt(fd, SockOpt.SO_REUSEADDR, 1)
    net.client.bind(fd, CLIENT_IP, 45000, net.now)
    net.client.connect(fd, SERVER_IP, PORT, net.now)
    net.settle()
    sfd = net.server.accept(lfd)
    assert sfd is not None
    close_pair(net, net.client, fd, net.server, sfd)
    fd2 = net.client.socket()
    net.client.setsockopt(fd2, SockOpt.SO_REUSEADDR, 1)
    net.client.bind(fd2, CLIENT_IP, 45000, net.now)
    with pytest.raises(AddressNotAvailable):
        net.client.connect(fd2, SERVER_IP, PORT, net.now)


# -- ports per destination (ref 7) -----------------------------------------------------------


def test_exhaustion_is_per_destination() -> None:
    """ref 7.3: ten ports in TIME_WAIT toward one server still leave all ten free toward another
    destination address (Lab E4b)."""
    net = make_net(client_config=KernelConfig(ip_local_port_range=(40000, 40009), tcp_tw_reuse=0))
    lfd = listen(net.server)
    ports = [one_request(net, lfd) for _ in range(10)]
    assert sorted(ports) == list(range(40000, 40010))
    with pytest.raises(AddressNotAvailable):
        net.client.connect(net.client.socket(), SERVER_IP, PORT, net.now)
    assert one_request(net, lfd, dst=SERVER_IP_2) in range(40000, 40010)


def test_even_ports_first_for_connect() -> None:
    """ref 7.2 step 5: connect() scans low's parity first (Lab E4: 5 even ports, then odd)."""
    net = make_net(client_config=KernelConfig(ip_local_port_range=(40000, 40009), tcp_tw_reuse=0))
    lfd = listen(net.server)
    ports = [one_request(net, lfd) for _ in range(10)]
    assert all(p % 2 == 0 for p in ports[:5]) and all(p % 2 == 1 for p in ports[5:])


def test_bind_ip_port0_locks_a_port_per_socket_across_destinations() -> None:
    """ref 7.4: bind(ip, 0) without IP_BIND_ADDRESS_NO_PORT reserves a port exclusively: ten
    sockets exhaust a 10-port range even toward two destinations (EADDRINUSE at bind)."""
    net = make_net(client_config=KernelConfig(ip_local_port_range=(40000, 40009)))
    fds = []
    for _ in range(10):
        fd = net.client.socket()
        net.client.bind(fd, CLIENT_IP, 0, net.now)
        fds.append(fd)
    with pytest.raises(AddressInUse):
        net.client.bind(net.client.socket(), CLIENT_IP, 0, net.now)


def test_ip_bind_address_no_port_shares_ports_across_destinations() -> None:
    """IP_BIND_ADDRESS_NO_PORT (4.2): bind(ip, 0) records the address only; connect() picks the
    port by four-tuple, so 2 destinations x 10 ports = 20 connections (Lab E9b)."""
    net = make_net(client_config=KernelConfig(ip_local_port_range=(40000, 40009)))
    lfd = listen(net.server)
    for dst in (SERVER_IP, SERVER_IP_2):
        for _ in range(10):
            fd = net.client.socket()
            net.client.setsockopt(fd, SockOpt.IP_BIND_ADDRESS_NO_PORT, 1)
            assert net.client.bind(fd, CLIENT_IP, 0, net.now) == 0
            net.client.connect(fd, dst, PORT, net.now)
    net.settle()
    assert sum(1 for c in net.client.connections() if c.state is TcpState.ESTABLISHED) == 20
    assert lfd


# -- bind() and server restarts (ref 8, Lab E6) ----------------------------------------------


def _restart(old_reuse: bool, new_reuse: bool) -> str:
    net = make_net()
    lfd = listen(net.server, 8080, reuseaddr=old_reuse)
    cfd = net.client.socket()
    net.client.connect(cfd, SERVER_IP, 8080, net.now)
    net.settle()
    sfd = net.server.accept(lfd)
    assert sfd is not None
    close_pair(net, net.server, sfd, net.client, cfd)  # server-side TIME_WAIT child
    net.server.close(lfd, net.now)
    assert net.server.tw_count == 1
    fd = net.server.socket()
    if new_reuse:
        net.server.setsockopt(fd, SockOpt.SO_REUSEADDR, 1)
    try:
        net.server.bind(fd, "0.0.0.0", 8080, net.now)
    except AddressInUse:
        return "EADDRINUSE"
    return "OK"


@pytest.mark.parametrize(
    ("old", "new", "result"),
    [
        (False, False, "EADDRINUSE"),
        (False, True, "EADDRINUSE"),  # TIME_WAIT children inherited tw_reuse = 0
        (True, False, "EADDRINUSE"),
        (True, True, "OK"),
    ],
)
def test_server_restart_bind_matrix(old: bool, new: bool, result: str) -> None:
    """Lab E6: a restart binds over TIME_WAIT children only if old and new both set
    SO_REUSEADDR (tw_reuse inherited in inet_twsk_alloc())."""
    assert _restart(old, new) == result


def test_live_listener_blocks_reuseaddr_bind() -> None:
    """Lab E6c: SO_REUSEADDR never shares a port with a listening socket."""
    net = make_net()
    listen(net.server, 8080, reuseaddr=True)
    fd = net.server.socket()
    net.server.setsockopt(fd, SockOpt.SO_REUSEADDR, 1)
    with pytest.raises(AddressInUse):
        net.server.bind(fd, "0.0.0.0", 8080, 0)


# -- abort, overflow, counters, memory ------------------------------------------------------


def test_linger_zero_close_sends_rst_and_leaves_no_time_wait() -> None:
    """SO_LINGER {1,0}: tcp_disconnect() sends RST, no FIN, no TIME_WAIT (ref 8, Lab E8)."""
    net = make_net()
    lfd = listen(net.server)
    cfd, sfd = open_pair(net, lfd)
    net.client.setsockopt(cfd, SockOpt.SO_LINGER, (1, 0))
    net.client.close(cfd, net.now)
    net.settle()
    assert net.client.tw_count == 0 and net.server.tw_count == 0
    assert any(s.segment.rst for s in net.wire.capture)
    assert not any(s.segment.fin for s in net.wire.capture)
    assert net.server.state(sfd) is TcpState.CLOSED


def test_max_tw_buckets_overflow_skips_time_wait() -> None:
    """inet_twsk_alloc(): at tw count >= tcp_max_tw_buckets the wait is skipped and
    TCPTimeWaitOverflow counts it (ref 5, Lab E11: limit 2, 5 closes -> tw 2, overflow 3)."""
    net = make_net(client_config=KernelConfig(tcp_max_tw_buckets=2))
    lfd = listen(net.server)
    for _ in range(5):
        one_request(net, lfd)
    assert net.client.tw_count == 2
    assert net.client.counters[C.TIME_WAIT_OVERFLOW] == 3
    assert net.client.counters[C.TW] == 2


def test_memory_estimate_uses_slab_sizes() -> None:
    """ref 9.1: ~256 B per minisocket vs ~2.4 KB + ~1.2 KB of file objects per open socket."""
    net = make_net()
    lfd = listen(net.server)
    for _ in range(3):
        one_request(net, lfd)
    mem = net.client.memory_bytes()
    assert mem["minisockets"] == 3 * TW_SOCK_BYTES
    assert mem["full_sockets"] == 0
    cfd, _ = open_pair(net, lfd)
    mem = net.client.memory_bytes()
    assert mem["full_sockets"] == FULL_SOCK_BYTES and mem["file_objects"] == FD_OBJECT_BYTES
    assert cfd


def test_counters_use_kernel_names() -> None:
    """TW counted when the TIME_WAIT timer is armed (__inet_twsk_schedule(), ref 9.2)."""
    net = make_net()
    lfd = listen(net.server)
    one_request(net, lfd)
    assert net.client.counters["TW"] == 1
    assert net.client.counters["ActiveOpens"] == 1
    assert net.server.counters["PassiveOpens"] == 1


def test_segment_to_closed_port_gets_rst() -> None:
    """tcp_v4_send_reset(): a SYN to a port nobody listens on is answered with RST|ACK."""
    net = make_net()
    fd = net.client.socket()
    net.client.connect(fd, SERVER_IP, 9, net.now)
    net.settle()
    assert any(s.segment.rst for s in net.wire.capture)
    assert net.client.state(fd) is TcpState.CLOSED


def test_four_tuple_lookup_is_per_destination() -> None:
    """The established hash is keyed by the full four-tuple (inet_match())."""
    net = make_net()
    lfd = listen(net.server)
    cfd, _ = open_pair(net, lfd)
    conn = net.client._sock(cfd).conn
    assert conn is not None
    ft = conn.tuple
    assert isinstance(ft, FourTuple) and net.client.ehash[ft] is conn


def test_timer_hz_250_kills_time_wait_on_the_wheel_bucket_not_at_60s() -> None:
    """With timer_hz=250 the minisocket dies at the next 2.048 s wheel bucket after its 60 s
    deadline (kernel/time/timer.c calc_index(); measured 60.5-62 s on 6.18.44), while its
    armed deadline, what sock_diag reports, stays 60 s."""
    from timewait.model.timerwheel import fires_at

    net = make_net()
    net.client.timer_hz = 250
    lfd = listen(net.server)
    one_request(net, lfd)
    (tw,) = tw_of(net.client)
    fire = fires_at(tw.expires - 60 * SEC, tw.expires, 250)
    assert fire > tw.expires
    net.wire.run(tw.expires)
    assert net.client.tw_count == 1  # the 60 s deadline passed; the bucket has not fired
    net.wire.run(fire - 1)
    assert net.client.tw_count == 1
    net.wire.run(fire)
    assert net.client.tw_count == 0
