"""The tracer: connect()/bind() failures and connection churn counted in the kernel by bpftrace.

Theory of operation
-------------------
What is counted and how it is keyed is timewait.doctor.trace's theory; this module owns the
engine: it checks what the machine allows (`preflight`), writes the bpftrace program
(`program`), runs bpftrace as a child process with JSON output, reads the counts it prints
each interval and stops it (`Tracer`), and turns its output into a TRACE_DTYPE table
(`rows_of_map`, with `Names` for namespaces and cgroups).

Why bpftrace (Debian's package, 0.17 on Debian 12) and not a library: the program needs BTF
field access (socket -> its network namespace, error, bind locks; task -> fd table), which
bpftrace compiles from a dozen lines, and hand-assembled BPF bytecode is not maintainable. The
Python BPF libraries are bcc (compiles C with LLVM at every start, needs kernel headers or its
own BTF path, and is heavier to install) and libbpf bindings with pre-compiled objects (a C
toolchain at build time for every kernel we support). bpftrace starts in ~0.6 s here, aggregates
in kernel maps, and its JSON output needs no decoder of ours beyond a line parser.

Tracepoints only: syscalls:sys_enter/exit_connect, sys_enter/exit_bind (CONFIG_FTRACE_SYSCALLS)
and sock:inet_sock_set_state (Linux 4.16+). No kprobes: many production kernels -- this one
too -- are built without CONFIG_KPROBES. Whatever the kernel lacks is left out of the program
and said in the notes ("connect() and bind() failures are not seen"), not an error.

Counting, not streaming: every event updates one hash map (@ev, key -> count) in the kernel;
an `interval` probe prints the whole map once a second and a "tick" line with the kernel's
monotonic clock (bpf_ktime_get_ns, the clock of time.monotonic_ns()); BEGIN prints "begin"
once every probe is attached (bpftrace runs BEGIN after attaching), END the last counts and
"end". The counts are cumulative since "begin": a reading is exact at its tick, and the window
is tick - begin. Per-socket maps remember the caller of connect() for events that happen later
in softirq (@own), which sockets connect asynchronously (@async), and per thread what a
connect()/bind() in flight was given (@c, @b); each entry is deleted when its socket or call
ends.

Namespaces: the program keeps only events of the network namespaces asked for, compared by
inode in the kernel (the socket's own namespace: sk->__sk_common.skc_net), so traffic of other
namespaces -- other tenants, other tests -- never reaches the counts. `all_netns` drops that
filter.

Cost (bench/bench_trace.py): on a flat-out loopback connect+close loop the tracer costs ~15 %
of the rate on this 2-vCPU VM, and an empty program on the same tracepoints as much: bpftrace
0.17 attaches tracepoints as perf events, which build a record for every state change of every
TCP socket before the program's first instruction, and any syscall tracepoint sends every
syscall of every task through the slow path (TIF_SYSCALL_TRACEPOINT). The counting itself is
within the noise. Raw tracepoints (BPF_RAW_TRACEPOINT / tp_btf) would skip the record; this
bpftrace has no probe type for them.

Lifetime: bpftrace is started with PR_SET_PDEATHSIG = SIGKILL (and refuses to start if we died
in between), so it dies with us even when we are SIGKILLed; its programs are attached through
perf events owned by its file descriptors, so the kernel detaches them when it dies: no probe
is left attached. PR_SET_PDEATHSIG follows the *thread* that forks: start a Tracer from a
thread that outlives it (the main thread). It runs in its own session, so a Ctrl-C in the
terminal reaches us, and we stop it (SIGINT: END prints the final counts), or kill it after
`STOP_TIMEOUT_S`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final

from timewait.errors import TimewaitError
from timewait.live import netns as _netns

if TYPE_CHECKING:
    import numpy as np

TRACEFS: Final = "/sys/kernel/tracing"
BTF_VMLINUX: Final = "/sys/kernel/btf/vmlinux"
LOCKDOWN: Final = "/sys/kernel/security/lockdown"
CGROUP_ROOTS: Final = ("/sys/fs/cgroup", "/sys/fs/cgroup/unified")
PR_SET_PDEATHSIG: Final = 1  # include/uapi/linux/prctl.h
MS_NONE: Final = 0
DEFAULT_INTERVAL_S: Final = 1.0
START_TIMEOUT_S: Final = 60.0  # bpftrace compiles with LLVM: ~0.6 s idle, more on a busy host
STOP_TIMEOUT_S: Final = 10.0
# Keys per map (BPFTRACE_MAP_KEYS_MAX; bpftrace's default is 4096). @ev holds one key per
# (kind, namespace, process, destination, errno): 65,536 of them take ~9 MB of kernel memory.
KEYS_MAX: Final = 65536
BPFTRACE_ENV: Final = "TIMEWAIT_BPFTRACE"  # another bpftrace binary (a newer build, tests)

# Tracepoints by what they show (events/<group>/<name> in tracefs).
TP_CONNECT: Final = ("syscalls/sys_enter_connect", "syscalls/sys_exit_connect")
TP_BIND: Final = ("syscalls/sys_enter_bind", "syscalls/sys_exit_bind")
TP_STATE: Final = ("sock/inet_sock_set_state",)
NOT_SEEN: Final = {
    TP_CONNECT: "connect() failures other than EADDRNOTAVAIL and the peer's (routing, arguments)",
    TP_BIND: "bind() failures",
    TP_STATE: "closes, opens and asynchronous connect() failures",
}


class TraceUnavailable(TimewaitError):
    """Tracing cannot run here (no root, no bpftrace, no tracefs, lockdown, ...): one line that
    says why and what to do. Everything else still works."""


# -- preflight -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """What this machine lets us trace: tracepoint groups present, and notes for the report."""

    connect: bool
    bind: bool
    state: bool
    bpftrace: str
    notes: tuple[str, ...] = ()


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def mount_tracefs(path: str = TRACEFS) -> None:
    """mount -t tracefs nodev PATH (what `mount` does; OSError on failure)."""
    libc = _libc()
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                           ctypes.c_void_p]  # fmt: skip
    if libc.mount(b"nodev", path.encode(), b"tracefs", MS_NONE, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def lockdown_mode(path: str = LOCKDOWN) -> str | None:
    """The kernel lockdown mode ("none", "integrity", "confidentiality"), None if unknown."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return None


def preflight(
    *,
    bpftrace: str | None = None,
    tracefs: str = TRACEFS,
    btf: str = BTF_VMLINUX,
    lockdown: str = LOCKDOWN,
    mount: bool = True,
    euid: int | None = None,
) -> Plan:
    """Check what tracing needs; mount tracefs when it is missing and we are root.

    Raises TraceUnavailable (one line) when nothing can be traced. Tracepoints the kernel
    lacks only drop their part, with a note. The paths can be swapped for tests; the bpftrace
    binary is `bpftrace`, else $TIMEWAIT_BPFTRACE, else the one on PATH.
    """
    uid = os.geteuid() if euid is None else euid
    bpftrace = bpftrace or os.environ.get(BPFTRACE_ENV) or "bpftrace"
    if uid != 0:
        raise TraceUnavailable(
            "tracing needs root: bpftrace loads eBPF programs (CAP_BPF, CAP_PERFMON) and runs "
            "as root only; run with sudo"
        )
    exe = shutil.which(bpftrace)
    if exe is None:
        raise TraceUnavailable(
            f"{bpftrace} is not installed: apt-get install bpftrace "
            "(Debian, Ubuntu) or dnf install bpftrace (Fedora)"
        )
    if lockdown_mode(lockdown) == "confidentiality":
        raise TraceUnavailable(
            "kernel lockdown (confidentiality) forbids eBPF from reading kernel memory: "
            "tracing is impossible on this boot (boot with lockdown=integrity or none)"
        )
    if not os.path.exists(btf):
        raise TraceUnavailable(
            f"the kernel has no BTF ({btf}; CONFIG_DEBUG_INFO_BTF): the tracer reads socket "
            "fields through it"
        )
    notes: list[str] = []
    events = os.path.join(tracefs, "events")
    if not os.path.isdir(events):
        if not mount:
            raise TraceUnavailable(
                f"tracefs is not mounted at {tracefs}: mount -t tracefs nodev {tracefs}"
            )
        try:
            mount_tracefs(tracefs)
        except OSError as e:
            raise TraceUnavailable(
                f"tracefs is not mounted at {tracefs} and mounting it failed ({e.strerror}): "
                f"mount -t tracefs nodev {tracefs}"
            ) from None
        notes.append(f"mounted tracefs on {tracefs} (it was not mounted)")
        if not os.path.isdir(events):
            raise TraceUnavailable(f"tracefs at {tracefs} has no events/: is it tracefs?")

    def present(group: tuple[str, ...]) -> bool:
        return all(os.path.isdir(os.path.join(events, tp)) for tp in group)

    have = {g: present(g) for g in (TP_CONNECT, TP_BIND, TP_STATE)}
    for group, ok in have.items():
        if not ok:
            missing = ", ".join(tp.replace("/", ":") for tp in group)
            notes.append(f"no tracepoint {missing} on this kernel: {NOT_SEEN[group]} not seen")
    if not any(have.values()):
        raise TraceUnavailable(
            "this kernel has none of the tracepoints the tracer needs (syscalls:sys_*_connect "
            "needs CONFIG_FTRACE_SYSCALLS; sock:inet_sock_set_state Linux 4.16+)"
        )
    return Plan(
        connect=have[TP_CONNECT], bind=have[TP_BIND], state=have[TP_STATE], bpftrace=exe,
        notes=tuple(notes),
    )  # fmt: skip


# -- the program ------------------------------------------------------------------------------

# Kernel constants the program uses (Linux uapi; stable):
# TCP states (include/net/tcp_states.h): 1 ESTABLISHED, 2 SYN_SENT, 3 SYN_RECV, 4 FIN_WAIT1,
# 7 CLOSE, 8 CLOSE_WAIT, 9 LAST_ACK. SOCK_STREAM 1, IPPROTO_TCP 6, S_IFSOCK 0xc000.
# errno: 4 EINTR, 106 EISCONN, 114 EALREADY, 115 EINPROGRESS.

# The program, in parts; @@NAME@@ marks what program() fills in. @ev's key is always
# (kind, netns, cgroup, pid, errno, family, laddr hi, lo, lport, raddr hi, lo, rport, comm).

_HEAD = r"""// timewait trace (generated by timewait.live.tracer; read its theory of operation)
BEGIN { printf("begin %llu\n", nsecs); }
"""

# connect() and bind(): the address given, read at entry while the user memory is there.
# The value: (fd, family, address hi, lo, port, and for connect() the socket that call put
# in SYN_SENT and the error it already failed with: see _STATE).
_ENTER = r"""
tracepoint:syscalls:sys_enter_@@CALL@@
{
  $sa6 = (struct sockaddr_in6 *)args->@@ARG@@;
  $fam = (uint64)$sa6->sin6_family;
  if ($fam == 2) {
    $sa4 = (struct sockaddr_in *)args->@@ARG@@;
    @@@MAP@@[tid] = ((int64)args->fd, $fam, (uint64)0, (uint64)$sa4->sin_addr.s_addr,
                   (uint64)bswap($sa4->sin_port)@@MORE@@);
  }
  if ($fam == 10) {
    $a = $sa6->sin6_addr.in6_u.u6_addr32;
    @@@MAP@@[tid] = ((int64)args->fd, $fam, ((uint64)$a[1] << 32) | $a[0],
                   ((uint64)$a[3] << 32) | $a[2], (uint64)bswap($sa6->sin6_port)@@MORE@@);
  }
}
"""

# The socket behind file descriptor $c.0 of the calling task, when it is a TCP socket; and
# the namespace it belongs to.
_SOCKET_OF_FD = r"""
    $fd = $c.0;
    $fam = $c.1;
    $ok = 0;
    $sk = (struct sock *)0;
    $fdt = curtask->files->fdt;
    if ($fd >= 0 && $fd < (int64)$fdt->max_fds) {
      $file = *($fdt->fd + $fd);
      if ($file != 0) {
        if (($file->f_inode->i_mode & 0xf000) == 0xc000) {
          $sock = (struct socket *)$file->private_data;
          $sk = $sock->sk;
          if ($sock->type == 1 && $sk->sk_protocol == 6) { $ok = 1; }
        }
      }
    }
    if ($ok) {
      $ns = (uint64)$sk->__sk_common.skc_net.net->ns.inum;
    }"""

_EXIT_CONNECT = r"""
tracepoint:syscalls:sys_exit_connect
/@c[tid].1 != 0/
{
  $c = @c[tid];
  delete(@c[tid]);
  $csk = $c.5;
  $pend = $c.6;
  $ret = (int64)args->ret;
  // EALREADY, EISCONN: a connect() already under way or done; not a failure
  if ($ret < 0 && $ret != -114 && $ret != -106) {@@SOCKET_OF_FD@@
    if ($ok && (@@FILTER@@)) {
      if ($ret == -115 || $ret == -4) {
        // EINPROGRESS, EINTR: the connection goes on without the caller
        if ($pend != 0) {
          // ... but it failed already, while connect() ran (a RST on loopback)
          @@EV_ASYNC_IN_CALL@@
        } else if ($csk != 0) {
          @async[$csk] = 1;
        }
      } else {
        @@EV_CONNECT_ERROR@@
      }
    }
  }
}
"""

_EXIT_BIND = r"""
tracepoint:syscalls:sys_exit_bind
/@b[tid].1 != 0/
{
  $c = @b[tid];
  delete(@b[tid]);
  $ret = (int64)args->ret;
  if ($ret < 0) {@@SOCKET_OF_FD@@
    if ($ok && (@@FILTER@@)) {
      @@EV_BIND_ERROR@@
    }
  }
}
"""

# TCP states: 1 ESTABLISHED, 2 SYN_SENT, 3 SYN_RECV, 4 FIN_WAIT1, 7 CLOSE, 8 CLOSE_WAIT,
# 9 LAST_ACK (include/net/tcp_states.h). Only the transitions below pass the predicate.
_STATE = r"""
tracepoint:sock:inet_sock_set_state
/args->protocol == 6 && ((args->oldstate == 7 && args->newstate == 2) ||
  (args->oldstate == 2 && (args->newstate == 1 || args->newstate == 7)) ||
  (args->oldstate == 3 && (args->newstate == 1 || args->newstate == 4)) ||
  (args->oldstate == 1 && args->newstate == 4) ||
  (args->oldstate == 8 && args->newstate == 9))/
{
  $sk = (struct sock *)args->skaddr;
  $key = (uint64)args->skaddr;
  $ns = (uint64)$sk->__sk_common.skc_net.net->ns.inum;
  if (@@FILTER@@) {
    $o = args->oldstate;
    $n = args->newstate;
    $fam = (uint64)args->family;
    $lport = (uint64)args->sport;
    $rport = (uint64)args->dport;
    if ($fam == 2) {
      $lh = (uint64)0; $ll = (uint64)$sk->__sk_common.skc_rcv_saddr;
      $rh = (uint64)0; $rl = (uint64)$sk->__sk_common.skc_daddr;
    } else {
      $s = $sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr32;
      $d = $sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32;
      $lh = ((uint64)$s[1] << 32) | $s[0]; $ll = ((uint64)$s[3] << 32) | $s[2];
      $rh = ((uint64)$d[1] << 32) | $d[0]; $rl = ((uint64)$d[3] << 32) | $d[2];
    }
    if ($o == 7) {
      // CLOSE -> SYN_SENT: connect() sends its SYN, in the caller's context
      @own[$key] = ((uint64)pid, (uint64)cgroup, comm);
      @@MARK_IN_CALL@@
    }
    if ($o == 2) {
      $own = @own[$key];
      if ($n == 1) {
        @@EV_OPENED@@
      } else {
        $err = (uint64)$sk->sk_err;
        if ($err != 0) {
          @@ASYNC_FAILURE@@
        }@@NO_PORT@@
      }
      delete(@own[$key]);
      @@FORGET_ASYNC@@
    }
    if ($o == 3 && $n == 1) {
      @@EV_ACCEPTED@@
    }
    if ($n == 4 || $n == 9) {
      // FIN_WAIT1: this side closed first (active); LAST_ACK: the peer did (passive).
      // A listener's accepted socket inherits its backlog; a connect()ed one has 0.
      $kind = $n == 4 ? 4 : 5;
      if ($sk->sk_max_ack_backlog != 0) {
        @@EV_CLOSE_SERVER@@
      } else {
        @@EV_CLOSE_CLIENT@@
      }
    }
  }
}
"""

# SYN_SENT -> CLOSE with sk_err set: inside the connect() call (its exit decides), after a
# connect() that returned EINPROGRESS (@async), or of a socket that was connecting before we
# started (no @own).
_ASYNC_WITH_CONNECT = r"""if (@c[tid].5 == $key) {
            $c = @c[tid];
            @c[tid] = ($c.0, $c.1, $c.2, $c.3, $c.4, $c.5, $err);
          } else if (@async[$key] != 0 || $own.0 == 0) {
            @@EV_ASYNC@@
          }"""
# In the caller of connect(): remember which socket that call is connecting.
_MARK_IN_CALL = r"""if (@c[tid].1 != 0) {
        $c = @c[tid];
        @c[tid] = ($c.0, $c.1, $c.2, $c.3, $c.4, $key, (uint64)0);
      }"""
# Without the connect() tracepoints every failure is seen here only, blocking ones too.
_ASYNC_WITHOUT_CONNECT = "@@EV_ASYNC@@"
# ... and so is EADDRNOTAVAIL: tcp_v4_connect()/tcp_v6_connect() set SYN_SENT before looking
# for a port and CLOSE when none is left (K net/ipv4/tcp_ipv4.c, "failure:"), with no error
# on the socket and no local port; close() of a connecting socket has SHUTDOWN_MASK set first
# (__tcp_close()). Other synchronous errors (routing, arguments) stay unseen.
_NO_PORT = r"""
        if ($err == 0 && $lport == 0 && $sk->sk_shutdown == 0) {
          @@EV_NO_PORT@@
        }"""

_TAIL = r"""
interval:ms:@@TICK_MS@@
{
  print(@ev);
  printf("tick %llu\n", nsecs);
}

END
{
  print(@ev);
  printf("end %llu\n", nsecs);
@@CLEARS@@}
"""


def _ev(kind: int | str, *, cg: str = "cgroup", pid: str = "(uint64)pid", err: str = "0",
        lh: str = "0", ll: str = "0", lp: str = "0", rh: str = "0", rl: str = "0",
        rp: str = "0", comm: str = "comm") -> str:  # fmt: skip
    """One @ev update; plain numbers are cast to the key's type."""

    def u(x: str | int) -> str:
        return f"(uint64){x}" if str(x).lstrip("-").isdigit() else str(x)

    key = ", ".join(
        (u(kind), "$ns", u(cg), u(pid), u(err), "$fam", u(lh), u(ll), u(lp), u(rh), u(rl),
         u(rp), comm)
    )  # fmt: skip
    return f"@ev[{key}] = count();"


def empty_program(plan: Plan, *, interval_s: float = 1.0) -> str:
    """The same probes doing nothing (their predicates never hold): what attaching costs."""
    out = [_HEAD]
    if plan.connect:
        out += [
            "tracepoint:syscalls:sys_enter_connect /args->fd == -99/ { @ev[0] = count(); }\n",
            "tracepoint:syscalls:sys_exit_connect /args->ret == -9999/ { @ev[1] = count(); }\n",
        ]
    if plan.bind:
        out += [
            "tracepoint:syscalls:sys_enter_bind /args->fd == -99/ { @ev[2] = count(); }\n",
            "tracepoint:syscalls:sys_exit_bind /args->ret == -9999/ { @ev[3] = count(); }\n",
        ]
    if plan.state:
        out.append(
            "tracepoint:sock:inet_sock_set_state /args->protocol == 255/ { @ev[4] = count(); }\n"
        )
    tick = str(max(1, round(interval_s * 1000)))
    return "".join(out) + _fill(_TAIL, TICK_MS=tick, CLEARS="  clear(@ev);\n")  # fmt: skip


def _fill(template: str, **parts: str) -> str:
    for name, value in parts.items():
        template = template.replace(f"@@{name}@@", value)
    assert "@@" not in template.replace("@@@", ""), template  # every placeholder filled
    return template


def program(
    plan: Plan, netns: Sequence[int] | None, *, interval_s: float = 1.0, with_pid: bool = True
) -> str:
    """The bpftrace program: counts for the namespaces with these inodes (None: every one).

    `with_pid=False` keys by command, cgroup and destination only (pid 0): a long-lived
    reader (the exporter) then never fills the map with one key per short-lived process."""
    flt = "1" if netns is None else " || ".join(f"$ns == {int(i)}" for i in sorted(set(netns)))
    pid, own_pid = ("(uint64)pid", "$own.0") if with_pid else ("0", "0")
    dest = dict(rh="$c.2", rl="$c.3", rp="$c.4")
    own = dict(cg="$own.1", pid=own_pid, comm="$own.2")
    peer = dict(lh="$lh", ll="$ll", rh="$rh", rl="$rl", rp="$rport")
    out = [_HEAD]
    maps = ["@ev"]
    if plan.connect:
        maps += ["@c", "@async"]
        more = ", (uint64)0, (uint64)0"
        out.append(_fill(_ENTER, CALL="connect", ARG="uservaddr", MAP="c", MORE=more))
        out.append(
            _fill(
                _EXIT_CONNECT,
                SOCKET_OF_FD=_SOCKET_OF_FD,
                FILTER=flt,
                EV_ASYNC_IN_CALL=_ev(2, pid=pid, err="$pend", **dest),
                EV_CONNECT_ERROR=_ev(1, pid=pid, err="(uint64)(-$ret)", **dest),
            )
        )
    if plan.bind:
        maps += ["@b"]
        out.append(_fill(_ENTER, CALL="bind", ARG="umyaddr", MAP="b", MORE=""))
        out.append(
            _fill(
                _EXIT_BIND,
                SOCKET_OF_FD=_SOCKET_OF_FD,
                FILTER=flt,
                EV_BIND_ERROR=_ev(
                    3, pid=pid, err="(uint64)(-$ret)", lh="$c.2", ll="$c.3", lp="$c.4"
                ),
            )
        )
    if plan.state:
        maps += ["@own"]
        ev_async = _ev(2, err="$err", rh="$rh", rl="$rl", rp="$rport", **own)
        out.append(
            _fill(
                _STATE,
                FILTER=flt,
                MARK_IN_CALL=_MARK_IN_CALL if plan.connect else "",
                EV_OPENED=_ev(6, **own, **peer),
                ASYNC_FAILURE=_fill(
                    _ASYNC_WITH_CONNECT if plan.connect else _ASYNC_WITHOUT_CONNECT,
                    EV_ASYNC=ev_async,
                ),
                FORGET_ASYNC="delete(@async[$key]);" if plan.connect else "",
                NO_PORT=""
                if plan.connect
                else _fill(
                    _NO_PORT, EV_NO_PORT=_ev(1, pid=pid, err="99", rh="$rh", rl="$rl", rp="$rport")
                ),
                EV_ACCEPTED=_ev(7, cg="0", pid="0", comm='""', lh="$lh", ll="$ll", lp="$lport"),
                EV_CLOSE_SERVER=_ev("(uint64)$kind", pid=pid, lh="$lh", ll="$ll", lp="$lport"),
                EV_CLOSE_CLIENT=_ev("(uint64)$kind", pid=pid, **peer),
            )
        )
    clears = "".join(f"  clear({m});\n" for m in maps)
    out.append(_fill(_TAIL, TICK_MS=str(max(1, round(interval_s * 1000))), CLEARS=clears))
    return "".join(out)


# -- names: namespaces and cgroups -------------------------------------------------------------


def netns_inode(target: _netns.Target | None) -> int:
    """The inode of a target's namespace file (our own for None): what the kernel filters on."""
    path = target.path if target is not None else _netns.SELF_NETNS
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        label = target.label if target is not None else "our namespace"
        raise _netns.NamespaceNotFound(
            f"{label} is gone ({path}): list namespaces with `ip netns list`"
        ) from None


def netns_label(inode: int, run_dir: str = _netns.NETNS_RUN_DIR) -> str:
    """ "netns:NAME" (a /run/netns name), "host" (PID 1's), or "netns:[INODE]"."""
    try:
        names = sorted(os.listdir(run_dir))
    except OSError:
        names = []
    for name in names:
        with contextlib.suppress(OSError):
            if os.stat(os.path.join(run_dir, name)).st_ino == inode:
                return f"netns:{name}"
    try:
        host = os.stat(_netns.INIT_NETNS).st_ino
    except OSError:
        host = _netns.PROC_NET_INIT_INO
    return _netns.HOST_LABEL if inode == host else f"netns:[{inode}]"


def cgroup2_root(mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """Where the cgroup v2 hierarchy is mounted (the ids bpftrace's `cgroup` gives)."""
    try:
        text = Path(mountinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            return left.split()[4]
    return None


_RUNTIMES: Final = (
    ("docker-", "docker"),
    ("cri-containerd-", "containerd"),
    ("crio-", "crio"),
    ("libpod-", "podman"),
)


def container_name(path: str) -> str:
    """A cgroup path as a person names it: "docker:0123456789ab" for a container's scope
    (docker, containerd, cri-o, podman; /docker/ID too), else its last component ("/" root)."""
    parts = [p for p in path.split("/") if p]
    if not parts:
        return "/"
    for i, part in enumerate(reversed(parts)):
        stem = part.removesuffix(".scope")
        for prefix, runtime in _RUNTIMES:
            if stem.startswith(prefix):
                return f"{runtime}:{stem[len(prefix) :][:12]}"
        parent = parts[-i - 2] if i + 2 <= len(parts) else ""
        if parent == "docker" and all(c in "0123456789abcdef" for c in part) and len(part) >= 12:
            return f"docker:{part[:12]}"
    return parts[-1]


class Names:
    """Cached names of cgroup ids (walks the cgroup v2 tree on a miss, at most every 5 s)."""

    def __init__(self, root: str | None = None) -> None:
        self.root = root if root is not None else cgroup2_root()
        self._cgroups: dict[int, str] = {}
        self._walked = -1e9

    def _walk(self) -> None:
        self._walked = time.monotonic()
        if not self.root:
            return
        found: dict[int, str] = {}
        stack = [self.root]
        while stack:
            d = stack.pop()
            try:
                found[os.stat(d).st_ino] = d[len(self.root) :] or "/"
                with os.scandir(d) as it:
                    stack.extend(e.path for e in it if e.is_dir(follow_symlinks=False))
            except OSError:
                continue
        self._cgroups = {k: container_name(v) for k, v in found.items()}

    def cgroup(self, cgid: int) -> str:
        if cgid == 0:
            return ""
        if cgid not in self._cgroups and time.monotonic() - self._walked > 5.0:
            self._walk()
        return self._cgroups.get(cgid, f"cgroup:{cgid}")


# -- parsing bpftrace's JSON -------------------------------------------------------------------

_V4_PREFIX: Final = b"\x00" * 10 + b"\xff\xff"


def _addr(family: int, hi: int, lo: int) -> bytes:
    """The program's two 64-bit halves -> 16 bytes (IPv4 as ::ffff:a.b.c.d, like Snapshot)."""
    if family == 2:
        return _V4_PREFIX + struct.pack("<I", lo & 0xFFFFFFFF)
    return struct.pack("<QQ", hi, lo)


def rows_of_map(data: Mapping[str, int], names: Names | None = None) -> np.ndarray:
    """@ev as bpftrace prints it ({"kind,ns,...,comm": count}) -> TRACE_DTYPE rows.

    Keys that do not parse (a comm with a quote bpftrace did not escape, say) are skipped."""
    from timewait.doctor import trace as T

    parsed = []
    for key, count in data.items():
        parts = key.split(",", 12)
        if len(parts) != 13:
            continue
        try:
            kind, ns, cg, pid, err, fam, lh, ll, lp, rh, rl, rp = (int(p) for p in parts[:12])
        except ValueError:
            continue
        if kind not in (1, 2, 3, 4, 5, 6, 7) or fam not in (2, 10):
            continue
        parsed.append((kind, ns, cg, pid, err, fam, lh, ll, lp, rh, rl, rp, parts[12], count))
    rows = T.empty(len(parsed))
    for i, (kind, ns, cg, pid, err, fam, lh, ll, lp, rh, rl, rp, comm, count) in enumerate(parsed):
        side = 0
        if kind in (T.Kind.ACTIVE_CLOSE, T.Kind.PASSIVE_CLOSE):
            side = T.SIDE_SERVER if lp and not rp else T.SIDE_CLIENT
        elif kind == T.Kind.OPENED:
            side = T.SIDE_CLIENT
        elif kind == T.Kind.ACCEPTED:
            side = T.SIDE_SERVER
        rows[i] = (
            kind, err, fam, side, ns, cg,
            (names.cgroup(cg) if names else "").encode()[:64], pid,
            comm.strip().encode()[:16], _addr(fam, lh, ll), lp, _addr(fam, rh, rl), rp,
            int(count),
        )  # fmt: skip
    return T.aggregate(rows)


@dataclass(frozen=True, slots=True)
class Reading:
    """Cumulative counts of one trace at one tick: `rows` over [start_ns, at_ns]."""

    rows: np.ndarray
    start_ns: int
    at_ns: int
    final: bool = False
    keys: int = 0  # keys of the kernel map
    keys_max: int = KEYS_MAX

    @property
    def window_ns(self) -> int:
        return max(0, self.at_ns - self.start_ns)

    @property
    def saturated(self) -> bool:
        """The kernel map is full: events with new keys are no longer counted."""
        return self.keys >= self.keys_max

    def tables(self) -> dict[str, np.ndarray]:
        """What a Snapshot carries of it (timewait.doctor.trace.tables)."""
        from timewait.doctor import trace as T

        return T.tables(self.rows, self.start_ns, self.window_ns)


# -- the child process ------------------------------------------------------------------------


def _die_with_parent() -> Callable[[], None]:
    """Popen preexec_fn: SIGKILL when we die (survives execve of a non-set-user-ID program);
    do not start at all if we are gone already."""
    parent = os.getpid()
    prctl = _libc().prctl

    def preexec() -> None:  # pragma: no cover - runs in the child
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


_NOISE: Final = ("couldn't set RLIMIT_MEMLOCK",)  # harmless with memcg accounting (5.11+)


@dataclass
class _State:
    begin_ns: int | None = None
    last: Reading | None = None
    pending: dict[str, int] | None = None
    ended: bool = False
    stderr: list[str] = field(default_factory=list)
    bad_lines: int = 0


class Tracer:
    """bpftrace counting for some network namespaces; `start()`, `reading()`, `stop()`.

    Args:
        netns: inodes of the namespaces to count (netns_inode()); None counts every one.
        interval_s: how often bpftrace prints the counts.
        plan: preflight()'s answer (run here when not given).
        names: cgroup name cache (shared between tracers if wanted).
        keys_max: keys per kernel map; counts of keys past it are lost (`Reading.saturated`).
        with_pid: key by pid too (see program()).
        text: another program to run instead (bench/bench_trace.py measures an empty one); it
            must print "begin", "tick" and "end" lines like program()'s.
    Use as a context manager: bpftrace is stopped on exit whatever happens.
    """

    def __init__(
        self,
        netns: Iterable[int] | None,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        plan: Plan | None = None,
        names: Names | None = None,
        keys_max: int = KEYS_MAX,
        with_pid: bool = True,
        text: str | None = None,
    ) -> None:
        self.netns = None if netns is None else tuple(sorted(set(netns)))
        self.interval_s = interval_s
        self.plan = plan
        self.names = names or Names()
        self.keys_max = keys_max
        self.with_pid = with_pid
        self.text = text
        self.proc: subprocess.Popen[str] | None = None
        self._state = _State()
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []

    @property
    def notes(self) -> tuple[str, ...]:
        return self.plan.notes if self.plan else ()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = START_TIMEOUT_S) -> Tracer:
        """Start bpftrace and return once every probe is attached (BEGIN has run).

        Raises TraceUnavailable (preflight, or bpftrace refusing the program: its first error
        line)."""
        if self.plan is None:
            self.plan = preflight()
        text = program(self.plan, self.netns, interval_s=self.interval_s, with_pid=self.with_pid)
        env = {
            **os.environ,
            "BPFTRACE_MAP_KEYS_MAX": str(self.keys_max),
            "BPFTRACE_STRLEN": "32",
        }
        try:
            self.proc = subprocess.Popen(
                [self.plan.bpftrace, "-B", "line", "-f", "json", "-e", text],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                preexec_fn=_die_with_parent(),  # the child dies with us (theory above)
                start_new_session=True,
            )
        except OSError as e:
            raise TraceUnavailable(f"cannot run {self.plan.bpftrace}: {e.strerror}") from None
        assert self.proc.stdout is not None and self.proc.stderr is not None
        for name, stream, fn in (
            ("timewait-trace-out", self.proc.stdout, self._read_stdout),
            ("timewait-trace-err", self.proc.stderr, self._read_stderr),
        ):
            t = threading.Thread(target=fn, args=(stream,), name=name, daemon=True)
            t.start()
            self._threads.append(t)
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._state.begin_ns is None and not self._state.ended:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            started = self._state.begin_ns is not None and not self._state.ended
        if not started:
            self._kill()
            raise TraceUnavailable(f"bpftrace did not start: {self.why()}")
        return self

    def why(self) -> str:
        """Why bpftrace failed or stopped: its first error line, or its exit status."""
        with self._cond:
            lines = [ln for ln in self._state.stderr if not any(n in ln for n in _NOISE)]
        errors = [ln for ln in lines if "ERROR" in ln] or lines
        if errors:
            return errors[0].strip()
        code = self.proc.poll() if self.proc else None
        return f"it exited with status {code}" if code is not None else "no output in time"

    def _read_stdout(self, stream: IO[str]) -> None:
        for line in stream:
            try:
                msg = json.loads(line)
            except ValueError:
                with self._cond:
                    self._state.bad_lines += 1
                continue
            self._on_message(msg)
        with self._cond:
            self._state.ended = True
            self._cond.notify_all()

    def _on_message(self, msg: object) -> None:
        if not isinstance(msg, dict):
            return
        kind, data = msg.get("type"), msg.get("data")
        if kind == "map" and isinstance(data, dict) and "@ev" in data:
            ev = data["@ev"]
            with self._cond:
                self._state.pending = ev if isinstance(ev, dict) else {}
            return
        if kind != "printf" or not isinstance(data, str):
            return
        word, _, num = data.strip().partition(" ")
        if word not in ("begin", "tick", "end") or not num.isdigit():
            return
        at = int(num)
        with self._cond:
            st = self._state
            if word == "begin":
                st.begin_ns = at
                self._cond.notify_all()
                return
            if st.begin_ns is None or (st.last is not None and st.last.final):
                return
            pending, st.pending, begin = st.pending or {}, None, st.begin_ns
        # Decode outside the lock: readers keep the previous reading meanwhile.
        reading = Reading(
            rows=rows_of_map(pending, self.names), start_ns=begin, at_ns=at,
            final=word == "end", keys=len(pending), keys_max=self.keys_max,
        )  # fmt: skip
        with self._cond:
            self._state.last = reading
            self._cond.notify_all()

    def _read_stderr(self, stream: IO[str]) -> None:
        for line in stream:
            with self._cond:
                if len(self._state.stderr) < 50:
                    self._state.stderr.append(line.rstrip())

    def reading(self) -> Reading:
        """The counts at the last tick (empty, window 0, before the first one)."""
        from timewait.doctor import trace as T

        with self._cond:
            st = self._state
            if st.last is not None:
                return st.last
            begin = st.begin_ns or 0
            return Reading(rows=T.empty(), start_ns=begin, at_ns=begin)

    def wait_reading(self, after_ns: int, timeout: float) -> Reading | None:
        """Block until a reading newer than `after_ns` (monotonic ns), or None on timeout or
        when bpftrace is gone."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                last = self._state.last
                if last is not None and last.at_ns > after_ns:
                    return last
                left = deadline - time.monotonic()
                if left <= 0 or self._state.ended:
                    return None
                self._cond.wait(left)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> Reading:
        """SIGINT bpftrace, read its final counts (END) and reap it; SIGKILL after `timeout`.

        Returns the final reading (the last tick's if END never came)."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._kill()
        for t in self._threads:
            t.join(timeout=timeout)
        self._kill()
        return self.reading()

    def _kill(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_TIMEOUT_S)

    def __enter__(self) -> Tracer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- one trace of one namespace: what `doctor --trace S` needs ---------------------------------


def inodes_of(
    netns: Sequence[str] = (), pid: int | None = None, all_netns: bool = False
) -> tuple[list[int] | None, dict[int, str]]:
    """--netns NAME|PATH ... / --pid / --all-netns -> (inodes to filter on or None, labels).

    None of them: our own namespace. Raises NamespaceNotFound (one line)."""
    if all_netns:
        return None, {}
    targets: list[_netns.Target | None] = []
    if pid is not None:
        targets.append(_netns.resolve(pid=pid))
    targets += [_netns.resolve(netns=n) for n in netns]
    if not targets:
        targets = [None]
    labels: dict[int, str] = {}
    for t in targets:
        ino = netns_inode(t)
        labels.setdefault(ino, t.label if t is not None else _netns.own_label())
    return list(labels), labels
