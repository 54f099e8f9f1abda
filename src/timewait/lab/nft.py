"""nftables tables inside a lab namespace: created with the project prefix, removed on exit.

Theory of operation
-------------------
`nft` runs inside the namespace (`ip netns exec NS nft ...`), so the rules live in that
namespace's own ruleset and nothing ever touches the host's. `NftTable` loads a table from
ruleset text (`nft -f -`), reads its named counters (`nft -j list counters table ...`) and
deletes the table when the context ends. The table is recorded (lab.owner) before it is loaded
and would vanish with its namespace anyway, so a SIGKILLed run leaves nothing behind once
`timewait lab cleanup` (or the next `timewait lab run`) has swept what the run left.

Table names are `tw_<pid>_<random>` (nft identifiers take no '-'); `PREFIX` is what cleanup
looks for.

`final_ack_dropper()` is the ruleset of lost-final-ack: in the output hook (on loopback every
packet crosses it once), per client port, drop the first pure ACK the client sends after its own
FIN -- that is the final ACK of the server's FIN -- and count what follows: the server's FIN
retransmissions and the re-ACKs the client's TIME_WAIT sends (ref 1.3), and RSTs.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Final

from timewait.lab import owner
from timewait.lab.namespaces import LabUnavailable

PREFIX: Final = "tw_"


class NftError(LabUnavailable):
    """nft is missing or refused the ruleset (the message carries nft's own error)."""


def _nft(ns: str, *args: str, stdin: str | None = None) -> str:
    if shutil.which("nft") is None:
        raise NftError("nft is not installed: run `bash scripts/system-packages.sh` (nftables)")
    res = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        raise NftError(f"nft {' '.join(args)} in {ns}: {res.stderr.strip().splitlines()[-1:]}")
    return res.stdout


def table_name() -> str:
    return f"{PREFIX}{os.getpid()}_{secrets.token_hex(3)}"


class NftTable:
    """An `inet` table in namespace `ns`, made from `body` (the text inside `table inet X {}`)."""

    def __init__(self, ns: str, body: str, name: str | None = None) -> None:
        self.ns = ns
        self.name = name or table_name()
        self.body = body
        self.loaded = False

    def load(self) -> NftTable:
        key = f"{self.ns}/{self.name}"
        owner.record("nft", key, netns=self.ns, table=self.name)
        try:
            _nft(self.ns, "-f", "-", stdin=f"table inet {self.name} {{\n{self.body}\n}}\n")
        except BaseException:
            owner.forget("nft", key)
            raise
        self.loaded = True
        return self

    def counters(self) -> dict[str, int]:
        """Named counters of this table: {name: packets}."""
        out = _nft(self.ns, "-j", "list", "counters", "table", "inet", self.name)
        data = json.loads(out)
        result: dict[str, int] = {}
        for item in data.get("nftables", []):
            c = item.get("counter")
            if c and c.get("table") == self.name:
                result[c["name"]] = int(c.get("packets", 0))
        return result

    def delete(self) -> None:
        if self.loaded:
            self.loaded = False
            try:
                _nft(self.ns, "delete", "table", "inet", self.name)
            finally:
                # Deleted, or its namespace is gone (and the table with it); if nft failed for
                # another reason, the namespace's deletion takes the table anyway.
                owner.forget("nft", f"{self.ns}/{self.name}")

    def __enter__(self) -> NftTable:
        return self.load()

    def __exit__(self, *exc: object) -> None:
        # The namespace may already be gone (then so is the table): ignore that failure.
        with suppress(NftError):
            self.delete()


def list_tables(ns: str) -> list[str]:
    """Table names in namespace `ns` (for tests and cleanup checks)."""
    out = _nft(ns, "list", "tables")
    return [line.split()[-1] for line in out.splitlines() if line.startswith("table")]


def final_ack_dropper(port: int) -> str:
    """Ruleset body: drop the client's first pure ACK after its FIN, toward server `port`.

    Counters: final_ack_dropped, reack (pure ACKs after that: re-ACKs from TIME_WAIT),
    client_fin, server_fin (FINs from the server, retransmissions included), client_rst,
    server_rst.
    """
    return f"""
  set finned {{ type inet_service; flags dynamic; }}
  set acked {{ type inet_service; flags dynamic; }}
  counter final_ack_dropped {{}}
  counter reack {{}}
  counter client_fin {{}}
  counter server_fin {{}}
  counter client_rst {{}}
  counter server_rst {{}}
  chain out {{
    type filter hook output priority 0; policy accept;
    tcp dport {port} tcp flags & rst == rst counter name client_rst
    tcp sport {port} tcp flags & rst == rst counter name server_rst
    tcp sport {port} tcp flags & fin == fin counter name server_fin
    tcp dport {port} tcp flags & fin == fin add @finned {{ tcp sport }} counter name client_fin
    tcp dport {port} tcp flags == ack tcp sport @acked counter name reack accept
    tcp dport {port} tcp flags == ack tcp sport @finned add @acked {{ tcp sport }} \\
        counter name final_ack_dropped drop
  }}
"""


@contextmanager
def final_ack_drop(ns: str, port: int) -> Iterator[NftTable]:
    with NftTable(ns, final_ack_dropper(port)) as table:
        yield table
