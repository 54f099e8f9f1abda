"""Packet-level scenarios: each headline number, small enough to run in seconds."""

from __future__ import annotations

import json

import pytest

from timewait.model.states import FD_OBJECT_BYTES, FULL_SOCK_BYTES, TW_SOCK_BYTES
from timewait.render.ladder import render_ladder
from timewait.sim.scenario import get, load_catalog

PACKET = (
    "lost-final-ack", "old-duplicates", "who-closes-first", "fin-timeout-myth",
    "max-tw-buckets", "linger-zero", "reuseaddr", "bind-before-connect", "memory",
)  # fmt: skip


def test_every_packet_scenario_is_registered() -> None:
    assert set(PACKET) <= set(load_catalog())


def test_lost_final_ack_every_first_final_ack_lost() -> None:
    """p = 1: TIME_WAIT re-ACKs every retransmitted FIN (0 resets); without the wait every
    retransmitted FIN meets an RST (resets == losses). RFC 9293 §3.6.1, ref 1.3."""
    r = get("lost-final-ack").run({"connections": 20, "p": 1.0, "interval_ms": 10}, seed=3)
    tw, no = r.variants["time-wait"], r.variants["no-time-wait"]
    assert tw["final_acks_lost"] == 20 and tw["fin_retransmits"] == 20
    assert tw["resets"] == 0 and tw["clean_closes"] == 20
    assert no["final_acks_lost"] == 20
    assert no["resets"] == no["final_acks_lost"] and no["clean_closes"] == 0
    text = render_ladder(r.trace, *r.trace_title)
    assert "X lost" in text and "TIME-WAIT -> CLOSED" in text


def test_lost_final_ack_without_loss_is_clean_in_both_variants() -> None:
    r = get("lost-final-ack").run({"connections": 10, "p": 0.0, "interval_ms": 10}, seed=3)
    for v in r.variants.values():
        assert v["resets"] == 0 and v["clean_closes"] == 10


def test_old_duplicates_stopped_by_time_wait_or_the_ack_check() -> None:
    """Without TIME_WAIT an old duplicate still has to pass the new incarnation's RFC 5961 5.2
    ACK check (K tcp_ack(): SEG.ACK >= SND.UNA - min(max window, bytes acked)); its ACK is
    the old incarnation's, so Linux drops it with a challenge ACK (probes
    est-data-too-old-ack-dropped, est-ack-too-old-challenge). PAWS stops them too."""
    r = get("old-duplicates").run({}, seed=1)  # defaults: 40 incarnations, 30% duplicated
    v = r.variants
    assert v["time-wait"]["corruptions"] == 0
    assert v["short-wait"]["corruptions"] == 0 and v["short-wait"]["old_acks_rejected"] > 0
    assert v["short-wait+paws"]["corruptions"] == 0
    assert v["short-wait+paws"]["paws_rejects"] > 0
    # The full wait makes every reconnect wait ~60 s (EADDRNOTAVAIL while it lasts).
    assert v["time-wait"]["last_connect_s"] >= 29 * 60
    # rfc1337=0: a duplicate's ACK draws an RST that assassinates the TIME_WAIT (RFC 1337 H1).
    assert v["time-wait,rfc1337=0"]["last_connect_s"] < 29 * 60


def test_who_closes_first_moves_time_wait_to_the_server() -> None:
    r = get("who-closes-first").run({"rate": 50, "duration_s": 10}, seed=1)
    c, s = r.variants["client-closes"], r.variants["server-closes"]
    # Inside one TIME_WAIT (10 s < 60 s) every connection is still waiting: R x t = 500.
    assert c["client_time_wait"] == 500 and c["server_time_wait"] == 0
    assert c["client_ports_in_use"] == 500
    assert s["client_time_wait"] == 0 and s["client_ports_in_use"] == 0
    assert 0 < s["server_time_wait"] <= 500
    assert s["server_memory_bytes"] == s["server_time_wait"] * TW_SOCK_BYTES
    assert set(r.series["client-closes"]) >= {"client_time_wait", "failures_per_s"}


def test_fin_timeout_changes_only_orphaned_fin_wait2() -> None:
    """Ref 2.1/2.2: TIME_WAIT is 60 s whatever tcp_fin_timeout; FIN_WAIT2 follows it."""
    r = get("fin-timeout-myth").run({"connections": 5}, seed=1)
    a, b = r.variants["tcp_fin_timeout=30"], r.variants["tcp_fin_timeout=60"]
    assert a["time_waits"] == b["time_waits"] == 5
    assert a["time_wait_s"] == b["time_wait_s"] == 60.0
    assert a["orphaned_fin_wait2"] == b["orphaned_fin_wait2"] == 5
    assert (a["fin_wait2_s"], b["fin_wait2_s"]) == (30.0, 60.0)


def test_max_tw_buckets_zero_overflows_and_loses_protection() -> None:
    r = get("max-tw-buckets").run({"connections": 30, "p": 0.5}, seed=1)
    big, small = r.variants["tcp_max_tw_buckets=131072"], r.variants["tcp_max_tw_buckets=0"]
    assert big["time_wait_overflows"] == 0 and big["resets"] == 0 and big["corruptions"] == 0
    assert small["time_wait_overflows"] >= 30
    # The server's ACK of the FIN is delayed (tcp_fin() pingpong) and rides on its FIN, so the
    # client goes FIN_WAIT_1 -> TIME_WAIT, which overflows: with no TIME_WAIT left to re-ACK
    # it, every lost final ACK ends in an RST (ref 5), and only those.
    assert small["resets"] == small["final_acks_lost"] > 0
    # Without TIME_WAIT only the RFC 5961 ACK check stops old duplicates (it did, here).
    assert small["old_acks_rejected"] > big["old_acks_rejected"]
    assert small["corruptions"] == big["corruptions"] == 0


def test_linger_zero_resets_and_leaves_no_time_wait() -> None:
    """Ref 8, Lab E8: RST instead of FIN, no TIME_WAIT, the peer sees ECONNRESET. The defaults
    are the kernel's (lab linger-zero on loopback): one RST per abort, no data lost (issue 17);
    closing before the peer ACKs the data is the named variant, where data is lost."""
    r = get("linger-zero").run({"connections": 5, "send_kb": 256}, seed=1)
    z, n = r.variants["linger-zero"], r.variants["close"]
    assert z["client_time_wait"] == 0 and z["aborts"] == 5 and z["peer_resets"] == 5
    assert z["rsts_sent"] == 5 and z["bytes_delivered"] == z["bytes_written"]
    early = r.variants["linger-zero, close before the ACK"]
    assert early["aborts"] == 5 and early["rsts_sent"] > 5
    assert early["bytes_delivered"] < early["bytes_written"]
    assert n["client_time_wait"] == 5 and n["peer_resets"] == 0
    assert n["bytes_delivered"] == n["bytes_written"]
    assert any(rung.segment is not None and rung.segment.rst for rung in r.trace)


def test_reuseaddr_matrix_equals_lab_e6() -> None:
    r = get("reuseaddr").run({"client_ports": 20}, seed=1)
    binds = {k: v["bind"] for k, v in r.variants.items() if "bind" in v}
    assert binds == {
        "old=off,new=off": "EADDRINUSE",
        "old=off,new=on": "EADDRINUSE",
        "old=on,new=off": "EADDRINUSE",
        "old=on,new=on": "ok",
    }
    for key in ("client reuseaddr=off", "client reuseaddr=on"):
        assert r.variants[key] == {"connections": 20, "eaddrnotavail": 20}


def test_bind_before_connect_capacity_per_variant() -> None:
    """Closed forms: bind(ip, 0) -> ports; IP_BIND_ADDRESS_NO_PORT -> ports x destinations."""
    r = get("bind-before-connect").run({"ports": 30, "destinations": 3}, seed=1)
    assert r.variants["bind"]["capacity"] == 30
    assert r.variants["bind"]["failures"] == {"EADDRINUSE": 150}
    assert r.variants["bind-no-port"]["capacity"] == 90
    assert r.variants["bind-no-port"]["failures"] == {"EADDRNOTAVAIL": 90}


def test_memory_per_socket_matches_slab_sizes() -> None:
    """Ref 9.1: ~256 B per TIME_WAIT minisocket vs ~2.4 KB + ~1.2 KB per open connection."""
    r = get("memory").run({"connections": 200}, seed=1)
    tw, est = r.variants["time-wait"], r.variants["established"]
    assert tw["time_wait"] == 200 and tw["memory_bytes"] == 200 * TW_SOCK_BYTES
    assert est["established"] == 200
    assert est["memory_bytes"] == 200 * (FULL_SOCK_BYTES + FD_OBJECT_BYTES)


@pytest.mark.parametrize("name", ["lost-final-ack", "reuseaddr"])
def test_same_seed_same_json(name: str) -> None:
    small = {"connections": 10} if name == "lost-final-ack" else {"client_ports": 5}
    a = json.dumps(get(name).run(small, seed=5).to_json(), sort_keys=True)
    assert a == json.dumps(get(name).run(small, seed=5).to_json(), sort_keys=True)
