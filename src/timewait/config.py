"""KernelConfig: every per-netns setting that shapes TIME_WAIT and ephemeral ports, frozen.

Theory of operation
-------------------
Each field is one sysctl of /proc/sys/net/ipv4, holding the kernel's own default. The live
collector builds a KernelConfig from sysctl text (`from_sysctl`), the simulator and the planner
take one as input, and the lab writes one into a private namespace (`to_sysctl`). Validation
happens once, when the value is built, with the bounds the kernel itself enforces, so every
KernelConfig that exists is one a Linux host could have.

Bounds were measured by writing each sysctl inside a throwaway namespace (`unshare -n`) on Linux
6.18.44, and agree with K net/ipv4/sysctl_net_ipv4.c:
  ip_local_port_range       1..65535 each, low <= high, low >= ip_unprivileged_port_start
                            (`ipv4_local_port_range()`); "1024 1024" is accepted
  ip_local_reserved_ports   list of ports and ranges, each 0..65535 ("8080,9000-9002")
  tcp_tw_reuse              0..2 (`proc_dou8vec_minmax`, extra2 = two)
  tcp_tw_reuse_delay        1..60000 ms (TCP_PAWS_MSL * 1000), Linux >= 6.14
  tcp_timestamps            0..255 (u8; 0 off, 1 on with per-connection offsets, others on
                            without offsets)
  tcp_fin_timeout           any int, seconds (`proc_dointvec_jiffies`); negative values are accepted
  tcp_max_tw_buckets        any int (`proc_dointvec`); negative values are accepted (every TIME_WAIT
                            then overflows)
  tcp_rfc1337               0..255 (u8; only non-zero matters)
  ip_autobind_reuse         0..1
  ip_unprivileged_port_start 0..65535 and <= ip_local_port_range low
  tcp_syn_retries           1..127
  tcp_invalid_ratelimit     any int, ms

A behaviour Profile (`linux`, `rfc9293`) is separate from the settings: it selects which rule
tables the model uses (TIME_WAIT length, RST and SYN handling), never a scatter of `if`s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from timewait.errors import ConfigError, ProfileError
from timewait.model.states import TCP_TIMEWAIT_LEN
from timewait.units import MS, SEC

# include/net/tcp.h: #define TCP_FIN_TIMEOUT TCP_TIMEWAIT_LEN -- why both defaults are 60.
TCP_FIN_TIMEOUT: Final = TCP_TIMEWAIT_LEN
# include/net/tcp.h: TCP_FIN_TIMEOUT_MAX (120*HZ), cap for the per-socket TCP_LINGER2.
TCP_FIN_TIMEOUT_MAX: Final = 120 * SEC
# include/net/tcp.h: TCP_PAWS_MSL 60 (s); also the upper bound of tcp_tw_reuse_delay.
TCP_PAWS_MSL: Final = 60 * SEC
# RFC 9293 §3.4.2: MSL "is taken to be 2 minutes"; §3.6.1 MUST-13: TIME-WAIT lasts 2*MSL.
RFC9293_MSL: Final = 120 * SEC

_INT_MIN: Final = -(2**31)
_INT_MAX: Final = 2**31 - 1

# Order of fields = order of KernelConfig's fields; used by from_sysctl/to_sysctl.
SYSCTL_NAMES: Final = (
    "ip_local_port_range",
    "ip_local_reserved_ports",
    "ip_unprivileged_port_start",
    "tcp_tw_reuse",
    "tcp_tw_reuse_delay",
    "tcp_timestamps",
    "tcp_fin_timeout",
    "tcp_max_tw_buckets",
    "tcp_rfc1337",
    "ip_autobind_reuse",
    "tcp_syn_retries",
    "tcp_invalid_ratelimit",
)


def _check_int(name: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, value, f"an integer in {lo}..{hi}")
    if not lo <= value <= hi:
        raise ConfigError(name, value, f"allowed range is {lo}..{hi}")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class KernelConfig:
    """The per-netns TCP settings that matter here, with Linux 6.18 defaults.

    Defaults are those of a fresh network namespace (`tcp_sk_init()`, `inet_init_net()`):
    containers do not inherit the host's tuning.
    """

    ip_local_port_range: tuple[int, int] = (32768, 60999)  # K af_inet.c inet_init_net()
    ip_local_reserved_ports: frozenset[int] = field(default_factory=frozenset)
    ip_unprivileged_port_start: int = 1024  # K af_inet.c inet_init_net()
    tcp_tw_reuse: int = 2  # tcp_sk_init(): 2 = loopback only (Linux 4.18+)
    tcp_tw_reuse_delay: int = 1000  # ms, tcp_sk_init(), Linux 6.14+
    tcp_timestamps: int = 1  # tcp_sk_init()
    tcp_fin_timeout: int = TCP_FIN_TIMEOUT // SEC  # s
    # Half the established hash: tcp_set_hashinfo(); 262144 / 2 on the reference machine.
    tcp_max_tw_buckets: int = 131072
    tcp_rfc1337: int = 0
    ip_autobind_reuse: int = 0
    tcp_syn_retries: int = 6  # TCP_SYN_RETRIES
    tcp_invalid_ratelimit: int = 500  # ms, HZ/2: one out-of-window ACK per 500 ms

    def __post_init__(self) -> None:
        rng = self.ip_local_port_range
        if (
            not isinstance(rng, tuple)
            or len(rng) != 2
            or not all(isinstance(p, int) and not isinstance(p, bool) for p in rng)
        ):
            raise ConfigError("ip_local_port_range", rng, "two integers 'low high'")
        _check_int("ip_unprivileged_port_start", self.ip_unprivileged_port_start, 0, 65535)
        lo, hi = rng
        if not (1 <= lo <= 65535 and 1 <= hi <= 65535):
            raise ConfigError("ip_local_port_range", rng, "each end must be in 1..65535")
        if lo > hi:
            raise ConfigError("ip_local_port_range", rng, "low must not exceed high")
        if lo < self.ip_unprivileged_port_start:
            raise ConfigError(
                "ip_local_port_range",
                rng,
                f"low must be >= ip_unprivileged_port_start ({self.ip_unprivileged_port_start})",
            )
        if not isinstance(self.ip_local_reserved_ports, frozenset):
            object.__setattr__(
                self, "ip_local_reserved_ports", frozenset(self.ip_local_reserved_ports)
            )
        for p in self.ip_local_reserved_ports:
            _check_int("ip_local_reserved_ports", p, 0, 65535)
        _check_int("tcp_tw_reuse", self.tcp_tw_reuse, 0, 2)
        _check_int("tcp_tw_reuse_delay", self.tcp_tw_reuse_delay, 1, TCP_PAWS_MSL // MS)
        _check_int("tcp_timestamps", self.tcp_timestamps, 0, 255)
        _check_int("tcp_fin_timeout", self.tcp_fin_timeout, _INT_MIN, _INT_MAX)
        _check_int("tcp_max_tw_buckets", self.tcp_max_tw_buckets, _INT_MIN, _INT_MAX)
        _check_int("tcp_rfc1337", self.tcp_rfc1337, 0, 255)
        _check_int("ip_autobind_reuse", self.ip_autobind_reuse, 0, 1)
        _check_int("tcp_syn_retries", self.tcp_syn_retries, 1, 127)
        _check_int("tcp_invalid_ratelimit", self.tcp_invalid_ratelimit, _INT_MIN, _INT_MAX)

    # -- derived values -------------------------------------------------------------------

    @property
    def port_range_size(self) -> int:
        """Ports in ip_local_port_range (28,232 by default)."""
        lo, hi = self.ip_local_port_range
        return hi - lo + 1

    @property
    def usable_ephemeral_ports(self) -> int:
        """Ports connect() may choose: the range minus reserved ports inside it."""
        lo, hi = self.ip_local_port_range
        return self.port_range_size - sum(1 for p in self.ip_local_reserved_ports if lo <= p <= hi)

    @property
    def timestamps_enabled(self) -> bool:
        """tcp_timestamps != 0 sends the option (K tcp_output.c tcp_syn_options())."""
        return self.tcp_timestamps != 0

    @property
    def invalid_ratelimit_ns(self) -> int:
        return self.tcp_invalid_ratelimit * MS

    def replace(self, **changes: object) -> KernelConfig:
        """A copy with some settings changed, validated like a new one."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    # -- sysctl text -----------------------------------------------------------------------

    @classmethod
    def from_sysctl(
        cls, values: Mapping[str, str], *, base: KernelConfig | None = None
    ) -> KernelConfig:
        """Build from sysctl text, as `/proc/sys/net/ipv4/NAME` holds it.

        Keys are leaf names (`tcp_tw_reuse`) or dotted (`net.ipv4.tcp_tw_reuse`); keys this
        type does not model are ignored. Missing keys keep `base` (Linux defaults if None).
        Raises ConfigError naming the setting for text that does not parse or is out of range.
        """
        changes: dict[str, object] = {}
        for key, text in values.items():
            name = key.replace("/", ".").rsplit(".", 1)[-1]
            if name not in SYSCTL_NAMES:
                continue
            changes[name] = parse_sysctl(name, text)
        return dataclasses.replace(base or cls(), **changes)  # type: ignore[arg-type]

    def to_sysctl(self) -> dict[str, str]:
        """Sysctl text for every field, in the kernel's own format; inverse of from_sysctl."""
        out: dict[str, str] = {}
        for name in SYSCTL_NAMES:
            value = getattr(self, name)
            if name == "ip_local_port_range":
                out[name] = f"{value[0]}\t{value[1]}"
            elif name == "ip_local_reserved_ports":
                out[name] = format_port_list(value)
            else:
                out[name] = str(value)
        return out

    def to_text(self) -> dict[str, str]:
        """to_sysctl() for people and JSON: whitespace runs as one space (the port range's
        tab), so no control character reaches a terminal or a document."""
        return {k: " ".join(v.split()) for k, v in self.to_sysctl().items()}


def parse_sysctl(name: str, text: str) -> object:
    """Parse one sysctl's text into the field's Python type (validation happens in KernelConfig)."""
    s = text.strip()
    if name == "ip_local_port_range":
        parts = s.split()
        if len(parts) != 2 or not all(_is_int(p) for p in parts):
            raise ConfigError(name, text, "two integers 'low high'")
        return (int(parts[0]), int(parts[1]))
    if name == "ip_local_reserved_ports":
        return parse_port_list(s)
    if not _is_int(s):
        raise ConfigError(name, text, "an integer")
    return int(s)


def _is_int(s: str) -> bool:
    return s.lstrip("-").isdigit() and s.count("-") <= 1 and not s.endswith("-")


def parse_port_list(text: str) -> frozenset[int]:
    """'8080,9000-9002' -> {8080, 9000, 9001, 9002} (the format of ip_local_reserved_ports)."""
    ports: set[int] = set()
    for item in text.replace(" ", "").split(","):
        if not item:
            continue
        lo_s, sep, hi_s = item.partition("-")
        if not lo_s.isdigit() or (sep and not hi_s.isdigit()):
            raise ConfigError(
                "ip_local_reserved_ports", text, "ports or ranges like 8080,9000-9010"
            )
        lo, hi = int(lo_s), int(hi_s) if sep else int(lo_s)
        if lo > hi or hi > 65535:
            raise ConfigError("ip_local_reserved_ports", text, "ports in 0..65535, ranges low-high")
        ports.update(range(lo, hi + 1))
    return frozenset(ports)


def format_port_list(ports: Iterable[int]) -> str:
    """{8080, 9000, 9001, 9002} -> '8080,9000-9002', as the kernel prints it."""
    out: list[str] = []
    run: list[int] = []
    for p in sorted(ports):
        if run and p == run[-1] + 1:
            run.append(p)
            continue
        if run:
            out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [p]
    if run:
        out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(out)


# -- behaviour profiles ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    """Which rule tables the model uses. `rules` keys the tables in timewait.model."""

    name: str
    description: str
    time_wait_len: int  # ns
    rules: str


LINUX: Final = Profile(
    name="linux",
    description="Linux 6.18: 60 s TIME_WAIT, restart on ACK-bearing segments, RST kills "
    "unless tcp_rfc1337, SYN accepted by higher seq or newer TSval, rejected SYN gets an ACK",
    time_wait_len=TCP_TIMEWAIT_LEN,
    rules="linux",
)

RFC9293: Final = Profile(
    name="rfc9293",
    description="RFC 9293 textbook: 2*MSL = 240 s TIME-WAIT, restart only on a retransmitted FIN, "
    "RST closes (§3.10.7.4), SYN accepted only with a higher seq (MAY-2), others dropped",
    time_wait_len=2 * RFC9293_MSL,
    rules="rfc9293",
)

PROFILES: Final[Mapping[str, Profile]] = {p.name: p for p in (LINUX, RFC9293)}


def get_profile(name: str) -> Profile:
    """Look a profile up by name; ProfileError lists the valid names."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ProfileError(
            f"unknown behaviour profile {name!r}: choose one of {', '.join(PROFILES)}"
        ) from None
