"""Remedies: what to change, what it changes, its risk, and the exact command or code.

Every remedy follows ref sections 10 and 12 (../shared/reference/linux-timewait.md) and is built
for the captured kernel (kernels.KERNEL_FACTS): a socket option or sysctl the kernel lacks is
left out, and one whose presence is unknown carries its requirement. The order in which rules
list them is the order of preference: stop the churn (pooling, keep-alive) first, then share
ports better, then widen the budget.

Never offered, anywhere (tests/doctor/test_never_recommend.py scans every remedy of every rule):
tcp_fin_timeout for TIME_WAIT (it bounds orphaned FIN_WAIT2 only, ref 2.2), tcp_tw_recycle
(removed in 4.12, broke NAT, ref 4), and lowering tcp_max_tw_buckets (skips TIME_WAIT
protection, ref 5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from timewait.config import KernelConfig, format_port_list
from timewait.doctor.kernels import has, needs
from timewait.snapshot import Snapshot

# ip_local_port_range lower bound must be >= ip_unprivileged_port_start (default 1024) and the
# upper <= 65535 (ref 7.1); ends of different parity avoid the kernel's "prefer different parity"
# note (set_local_port_range()).
WIDE_RANGE: Final = (1024, 65535)
SYSCTL_FILE: Final = "/etc/sysctl.d/90-timewait.conf"
_REUSE_MEANING: Final = {0: "off", 1: "on", 2: "loopback only"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Remedy:
    """One fix: an id, a title, what it changes, its risk, and commands and/or code."""

    id: str
    title: str
    changes: str
    risk: str
    commands: tuple[str, ...] = ()  # shell lines, in order
    code: str = ""  # a Python snippet
    code_c: str = ""  # the same in C, where the fix is a socket option
    requires: str = ""  # e.g. "Linux >= 4.2" when the captured kernel is unknown

    def texts(self) -> tuple[str, ...]:
        """Every piece of text shown to a user (for the never-recommend scan)."""
        return (self.title, self.changes, self.risk, *self.commands, self.code, self.code_c,
                self.requires)  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class Context:
    """What remedies need to know about the captured system."""

    kernel: tuple[int, int]
    config: KernelConfig
    namespace: str

    @classmethod
    def of(cls, snapshot: Snapshot, kernel: tuple[int, int]) -> Context:
        return cls(kernel=kernel, config=snapshot.config, namespace=snapshot.namespace)

    @property
    def prefix(self) -> str:
        """Run a command inside the captured namespace (sysctls are per netns, ref 11)."""
        ns = self.namespace
        if ns.startswith("netns:"):
            name = ns.removeprefix("netns:")
            return f"nsenter --net={name} " if "/" in name else f"ip netns exec {name} "
        if ns.startswith("pid:"):
            return f"nsenter -t {ns.removeprefix('pid:')} -n "
        return ""

    def sysctl(self, *settings: tuple[str, str]) -> tuple[str, ...]:
        """`sysctl -w` lines plus how to persist them (per namespace for containers)."""
        lines = [
            f"{self.prefix}sysctl -w net.ipv4.{k}=" + (f'"{v}"' if " " in v else v)
            for k, v in settings
        ]
        if self.prefix:
            lines.append("# persist: the container's sysctls (docker run --sysctl, Pod sysctls)")
        else:
            body = "\\n".join(f"net.ipv4.{k} = {v}" for k, v in settings)
            lines.append(f"printf '{body}\\n' | sudo tee -a {SYSCTL_FILE}")
        return tuple(lines)


def pooling() -> Remedy:
    """Pooling and keep-alive: the durable fix (landscape 7: aiohttp#1142, web3.py#152, ...)."""
    return Remedy(
        id="pool-connections",
        title="Reuse connections: one pooled, keep-alive client per process",
        changes="Each request stops opening (and closing) its own TCP connection, so TIME_WAITs "
        "and new ports per second drop by the number of requests per connection.",
        risk="None for the kernel. Pooled connections can be closed by the server while idle: "
        "keep the client's retry on a stale connection (most HTTP clients do).",
        code=(
            "import requests\n"
            "session = requests.Session()  # once per process, not per request\n"
            "for url in urls:\n"
            "    session.get(url)  # reuses the kept-alive connection\n"
            "# nginx -> upstream: upstream app { server 127.0.0.1:8080; keepalive 32; }\n"
            '#   with proxy_http_version 1.1; proxy_set_header Connection "";'
        ),
    )


def peer_closes_first() -> Remedy:
    """The side that closes first holds TIME_WAIT (ref 1.1)."""
    return Remedy(
        id="peer-closes-first",
        title="Let the server close first",
        changes="TIME_WAIT stays with the side that sends the first FIN (ref 1.1). If the server "
        "closes, its TIME_WAIT costs ~256 B and blocks one four-tuple, while the client's "
        "ephemeral ports are released at once.",
        risk="Needs the protocol to say who closes (HTTP/1.1 'Connection: close' from the "
        "server). Moves TIME_WAIT to the server, where it is usually harmless (ref 12.1).",
        code=(
            "# client: read until EOF (the server's FIN) before closing\n"
            "while sock.recv(65536):\n"
            "    pass\n"
            "sock.close()"
        ),
    )


def more_destinations() -> Remedy:
    """Each (src, dst, dport) has its own port budget (ref 7.3)."""
    return Remedy(
        id="more-destinations",
        title="Spread connections over more destination IPs/ports or source IPs",
        changes="Each (source IP, destination IP, destination port) has its own set of "
        "ephemeral ports (ref 7.3): two backend ports or two source addresses double the "
        "budget.",
        risk="Needs the application or load balancer to use them. Extra source addresses help "
        "only if the client does not reserve a port per socket with bind(ip, 0) (ref 7.4).",
        commands=(
            "# e.g. a second listening port on the backend and both in the client's pool:",
            "#   upstream app { server 198.51.100.7:8080; server 198.51.100.7:8081; }",
        ),
    )


def tw_reuse(ctx: Context) -> Remedy | None:
    """tcp_tw_reuse=1: outgoing connections only, timestamps required (ref 3, 12.3)."""
    cfg = ctx.config
    if cfg.tcp_tw_reuse == 1 or not cfg.timestamps_enabled:
        return None
    if has(ctx.kernel, "tcp_tw_reuse_delay"):
        when = (
            f"after tcp_tw_reuse_delay ({cfg.tcp_tw_reuse_delay} ms; keep it above the peer's "
            "timestamp tick, 1 ms for Linux peers)"
        )
    else:
        when = "about 1-2 s after it began (the pre-6.14 one-second test)"
    return Remedy(
        id="tw-reuse",
        title="Let connect() reuse TIME_WAIT ports: tcp_tw_reuse=1",
        changes=f"An outgoing connect() may take over a TIME_WAIT of the same four-tuple {when}, "
        "if the old connection carried timestamps (tcp_twsk_unique(), ref 3). It does nothing "
        "for accepted (server-side) connections.",
        risk="Safety rests on TCP timestamps (PAWS, RFC 7323): where a middlebox strips them, "
        "no reuse happens (no harm, no gain). Applies to every connection in the namespace; "
        f"current value {cfg.tcp_tw_reuse} ({_REUSE_MEANING.get(cfg.tcp_tw_reuse, '?')}).",
        commands=ctx.sysctl(("tcp_tw_reuse", "1")),
    )


# Tested as written: tests/doctor/test_remedy_code.py runs the Python function and compiles and
# runs the C one in a namespace whose range is smaller than the connections they open.
NO_PORT_PY: Final = """import socket

IP_BIND_ADDRESS_NO_PORT = 24  # <linux/in.h>, Linux >= 4.2


def connect_from(source_ip, dst_ip, dst_port):
    \"\"\"connect() from source_ip; the port is chosen at connect(), shared per four-tuple.\"\"\"
    family = socket.AF_INET6 if ":" in source_ip else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)  # before bind()
    s.bind((source_ip, 0))  # records the address only
    s.connect((dst_ip, dst_port))
    return s
"""

NO_PORT_C: Final = """#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24 /* <linux/in.h>, Linux >= 4.2 */
#endif

/* connect() from source_ip (IPv4); the port is chosen at connect(). Returns the fd or -1. */
int connect_from(const char *source_ip, const char *dst_ip, unsigned short dst_port)
{
    struct sockaddr_in src = {.sin_family = AF_INET}, dst = {.sin_family = AF_INET};
    int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    inet_pton(AF_INET, source_ip, &src.sin_addr);
    inet_pton(AF_INET, dst_ip, &dst.sin_addr);
    dst.sin_port = htons(dst_port);
    if (setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one) < 0 ||
        bind(fd, (struct sockaddr *)&src, sizeof src) < 0 ||
        connect(fd, (struct sockaddr *)&dst, sizeof dst) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}
"""


def bind_address_no_port(ctx: Context) -> Remedy | None:
    """IP_BIND_ADDRESS_NO_PORT (4.2+): bind the address, let connect() choose the port
    (ref 7.4, 12.5; kernel doc of ip_autobind_reuse recommends it)."""
    ok = has(ctx.kernel, "ip_bind_address_no_port")
    if ok is False:
        return None
    return Remedy(
        id="bind-address-no-port",
        title="Clients that pin a source address: set IP_BIND_ADDRESS_NO_PORT before bind()",
        changes="bind(ip, 0) without it reserves the port for every destination at once, and "
        "keeps it through TIME_WAIT; with it bind() records only the address and connect() "
        "picks a port whose four-tuple is free, sharing each port across destinations "
        "(ref 7.4; Lab E9b).",
        risk="None known; the application (or its HTTP/DB client) must set the option. "
        "Ports already held keep their bind() ownership until their sockets and TIME_WAITs "
        "are gone (up to 60 s).",
        code=NO_PORT_PY,
        code_c=NO_PORT_C,
        requires="" if ok else needs("ip_bind_address_no_port"),
    )


def _no_port_alternative(ctx: Context) -> tuple[str, str]:
    """How to name IP_BIND_ADDRESS_NO_PORT for this kernel: (text, requirement)."""
    ok = has(ctx.kernel, "ip_bind_address_no_port")
    if ok is False:
        return "", ""
    return " with IP_BIND_ADDRESS_NO_PORT", "" if ok else needs("ip_bind_address_no_port")


def let_connect_choose(ctx: Context) -> Remedy:
    """No bind() at all: connect() chooses address and port (ref 7.2)."""
    alt, req = _no_port_alternative(ctx)
    return Remedy(
        id="let-connect-choose",
        title="Do not bind() before connect() unless the source address must be chosen",
        changes="A socket that only calls connect() gets its source address from the route and "
        "its port from connect()'s four-tuple-aware search, so one port serves every "
        "destination (ref 7.2, 7.3).",
        risk="None, unless the source address matters (several addresses or interfaces): then "
        f"bind the address{alt or ' only, port 0'} instead.",
        code="s = socket.create_connection((dst_ip, dst_port))  # no bind(): the kernel chooses",
        requires=req,
    )


def local_port_range(ctx: Context) -> Remedy | None:
    """IP_LOCAL_PORT_RANGE (6.3+): a per-socket slice of the range, no port pinned (ref 7.4)."""
    ok = has(ctx.kernel, "ip_local_port_range_sockopt")
    if ok is False:
        return None
    lo, hi = ctx.config.ip_local_port_range
    mid = lo + (hi - lo) // 2
    return Remedy(
        id="ip-local-port-range",
        title="Give each process its own slice of the range: IP_LOCAL_PORT_RANGE",
        changes="A per-socket sub-range (used by connect() and bind(0)) replaces fixed source "
        "ports, e.g. for workers that must not collide; connect() still shares each port "
        "across destinations, and from Linux 6.8 scans both parities in it (ref 7.4).",
        risk="A narrow slice runs out sooner for one destination: size it for the worker's "
        "peak (connections per second x 60 s per destination without tcp_tw_reuse).",
        code=(
            "IP_LOCAL_PORT_RANGE = 51  # <linux/in.h>, Linux >= 6.3\n"
            f"lo, hi = {lo}, {mid}  # this worker's slice\n"
            "s.setsockopt(socket.IPPROTO_IP, IP_LOCAL_PORT_RANGE, (hi << 16) | lo)\n"
        ),
        requires="" if ok else needs("ip_local_port_range_sockopt"),
    )


def autobind_reuse(ctx: Context) -> Remedy | None:
    """ip_autobind_reuse=1 + SO_REUSEADDR: bind(0) may share a port once the range is used up
    (`inet_csk_find_open_port()` relax pass; measured on 6.18: the 21st bind(0) in a 20-port
    range succeeded and connect() to another destination worked)."""
    ok = has(ctx.kernel, "ip_autobind_reuse")
    if ok is False or ctx.config.ip_autobind_reuse == 1:
        return None
    alt, req = _no_port_alternative(ctx)
    requires = "; ".join(r for r in ("" if ok else needs("ip_autobind_reuse"), req) if r)
    return Remedy(
        id="autobind-reuse",
        title="Where code cannot change its bind(): SO_REUSEADDR before bind(0) and "
        "ip_autobind_reuse=1",
        changes="When every port is taken, bind(ip, 0) may hand out a port that only "
        "non-listening SO_REUSEADDR sockets hold, so bind-before-connect keeps working for "
        "destinations whose four-tuple on that port is free (ref 7.4).",
        risk="bind() does not know the destination: it can return a port whose four-tuple to "
        "it is taken, and connect() then fails with EADDRNOTAVAIL (measured). Only sockets "
        "that set SO_REUSEADDR share, and the sysctl applies to the whole namespace. The "
        f"kernel documentation recommends binding the address{alt} instead.",
        commands=ctx.sysctl(("ip_autobind_reuse", "1")),
        code="s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # before bind((ip, 0))",
        requires=requires,
    )


def widen_range(ctx: Context, listening: tuple[int, ...], capacity: int) -> Remedy | None:
    """Wider ip_local_port_range, with service ports reserved first (ref 7.1, 12; landscape 7
    #18-19: a widened range that swallowed service ports)."""
    cfg = ctx.config
    lo, hi = WIDE_RANGE
    lo = max(lo, cfg.ip_unprivileged_port_start)
    if cfg.ip_local_port_range[0] <= lo and cfg.ip_local_port_range[1] >= hi:
        return None
    keep = {p for p in cfg.ip_local_reserved_ports}
    keep.update(p for p in listening if lo <= p <= hi)
    new_size = hi - lo + 1 - sum(1 for p in keep if lo <= p <= hi)
    settings: list[tuple[str, str]] = []
    if keep:
        settings.append(("ip_local_reserved_ports", format_port_list(keep)))
    settings.append(("ip_local_port_range", f"{lo} {hi}"))
    listed = format_port_list(keep) if keep else "none listening now"
    return Remedy(
        id="widen-port-range",
        title=f"Widen ip_local_port_range to {lo}-{hi}, reserving service ports first",
        changes=f"Ports per destination grow from {capacity:,} to about "
        f"{new_size:,}. Reserved ports ({listed}) stay out of connect()'s choice (ref 7.1).",
        risk="Any service that binds a fixed port in the new range but is not listening now "
        "(stopped, restarting, started later) can find it taken by an outgoing connection "
        "(EADDRINUSE): add every such port to ip_local_reserved_ports. Firewall rules that "
        "assume ephemeral ports >= 32768 need updating.",
        commands=ctx.sysctl(*settings),
    )


def reserve_listeners(ctx: Context, ports: tuple[int, ...]) -> Remedy:
    """ip_local_reserved_ports keeps connect()/bind(0) off service ports (ref 7.1)."""
    keep = set(ctx.config.ip_local_reserved_ports) | set(ports)
    return Remedy(
        id="reserve-service-ports",
        title="Reserve the listening ports that sit inside the ephemeral range",
        changes="connect() and bind(0) never pick reserved ports; an explicit bind() still can "
        "(inet_is_local_reserved_port(), ref 7.1).",
        risk=f"Removes {len(ports)} port(s) from every destination's budget; keep existing "
        "reservations in the list (the sysctl replaces the whole list).",
        commands=ctx.sysctl(("ip_local_reserved_ports", format_port_list(keep))),
    )


def timestamps_on(ctx: Context) -> Remedy:
    """tw_reuse needs tw_ts_recent_stamp != 0, i.e. timestamps (ref 3 condition 3, Lab E7c)."""
    return Remedy(
        id="timestamps-on",
        title="Turn TCP timestamps back on: tcp_timestamps=1",
        changes="Connections negotiate timestamps again, so tcp_tw_reuse can take over "
        "TIME_WAITs (it never does without them) and PAWS protects new incarnations.",
        risk="12 bytes of option per segment. With 1 the offsets are random per connection "
        "(Linux >= 4.10), so uptime is not exposed.",
        commands=ctx.sysctl(("tcp_timestamps", "1")),
    )


def tw_reuse_off(ctx: Context) -> Remedy:
    return Remedy(
        id="tw-reuse-off",
        title="Or set tcp_tw_reuse back to its default, 2",
        changes="Makes the configuration say what the kernel does: without timestamps no "
        "TIME_WAIT is ever reused.",
        risk="None: it has no effect without timestamps anyway.",
        commands=ctx.sysctl(("tcp_tw_reuse", "2")),
    )


def raise_tw_buckets(ctx: Context, minisockets: int) -> Remedy:
    """tcp_max_tw_buckets is a safety cap; never lower it (ref 5, 12.4)."""
    cur = ctx.config.tcp_max_tw_buckets
    target = max(262_144, 2 * minisockets, 2 * max(cur, 0))
    return Remedy(
        id="raise-tw-buckets",
        title=f"Raise tcp_max_tw_buckets to {target:,}",
        changes="TIME_WAIT states that are now skipped (TCPTimeWaitOverflow) are kept again, "
        "so late segments and a lost final ACK are handled as TCP requires (ref 5).",
        risk=f"Memory: ~256 B per TIME_WAIT, at most {target * 256 / 2**20:,.0f} MiB at the "
        "limit. Fix the churn too: the limit only caps the symptom.",
        commands=ctx.sysctl(("tcp_max_tw_buckets", str(target))),
    )


def fix_peer_close() -> Remedy:
    """FIN_WAIT2 orphans wait for a peer that has not closed (ref 2.2)."""
    return Remedy(
        id="fix-peer-close",
        title="Find the peer that never closes its side",
        changes="An orphaned FIN_WAIT2 waits for the peer's FIN; the peer application holds "
        "the connection in CLOSE_WAIT. Fixing its close() frees both ends.",
        risk="None; look on the peer: `ss -tan state close-wait` there.",
        commands=("ss -tan state close-wait  # run on the peer host",),
    )


def so_reuseaddr() -> Remedy:
    """Server restarts vs TIME_WAIT on the listening port (ref 8, 12.6)."""
    return Remedy(
        id="so-reuseaddr",
        title="Set SO_REUSEADDR on listening sockets (restarts with TIME_WAIT present)",
        changes="A restarted server can bind its port while old connections sit in TIME_WAIT "
        "on it (the old process must have set it too: TIME_WAITs inherit the flag, ref 8).",
        risk="None for TCP servers; it does not let two live listeners share a port.",
        code=(
            "srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n"
            "srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # before bind()\n"
            "srv.bind(('0.0.0.0', port)); srv.listen()"
        ),
    )


def balanced_range(ctx: Context) -> Remedy:
    lo, hi = ctx.config.ip_local_port_range
    new_hi = hi - 1 if hi > lo else hi
    return Remedy(
        id="range-parity",
        title=f"Give ip_local_port_range ends of different parity ({lo} {new_hi})",
        changes="connect() scans one parity and bind(0) the other (ref 7.2 step 5); ends of "
        "different parity keep the two halves equal, as the kernel documentation asks.",
        risk="One port fewer in the range.",
        commands=ctx.sysctl(("ip_local_port_range", f"{lo} {new_hi}")),
    )
