"""Make the README's NAT plan example on the kernel (as root): `python scripts/demo-nat-plan.py`.

The lab's snat router (lab/experiments/nat.py: throwaway namespaces, 198.18.0.0/15, nftables
`masquerade to :40000-40099`, 100 translated ports): one client holds 90 connections open,
three others churn 30 connections a second between them (each closed at once, so its entry
sits in conntrack TIME_WAIT). Seven and twelve seconds in, the router is captured and saved;
`timewait plan` then reads the two files, and the share of SYNs the kernel dropped after the
first capture is printed beside it. Everything is removed afterwards.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from timewait.lab.experiments.nat import PORT, SERVER_IP, nat_topology, nb_load
from timewait.lab.namespaces import NetnsProcess, run_in_netns
from timewait.live.capture import capture

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
from tests.live.test_nat_kernel import hold

RATE, DURATION, HELD = 30.0, 14.0, 90


def main() -> int:
    with (
        nat_topology(4, (40000, 40099)) as topo,
        NetnsProcess(topo.clients[0], hold, HELD),
        tempfile.TemporaryDirectory() as tmp,
    ):
        start = time.monotonic_ns() + 200_000_000
        churners = topo.clients[1:]
        with ThreadPoolExecutor(len(churners)) as ex:
            futs = [
                ex.submit(run_in_netns, ns, nb_load, SERVER_IP, PORT, RATE / len(churners),
                          DURATION, start, False, k / RATE, timeout=DURATION + 60)
                for k, ns in enumerate(churners)
            ]  # fmt: skip
            for at, name in ((7.0, "before"), (12.0, "now")):
                time.sleep(max(0.0, (start + int(at * 1e9) - time.monotonic_ns()) / 1e9))
                capture(netns=topo.router).save(f"{tmp}/{name}.npz")  # a demo: the load's clock
            results = [f.result() for f in futs]
        files = ["--from", f"{tmp}/before.npz", "--from", f"{tmp}/now.npz"]
        tw = [sys.executable, "-m", "timewait"]
        subprocess.run([*tw, "plan", *files], check=False)
    made = int(RATE * (DURATION - 7.0))
    dropped = sum(1 for r in results for t in r["drops"] if t >= 7.0)
    print(
        f"kernel: {dropped} of the {made} SYNs sent after the first capture were dropped "
        f"({dropped / made:.0%}, {dropped / (DURATION - 7.0):.1f}/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
