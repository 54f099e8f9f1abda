"""Make the README's report example on the kernel (as root): `python scripts/demo-report.py`.

A throwaway namespace with 1,000 ephemeral ports (40000-40999, tcp_tw_reuse=0) and a client
opening and closing 30 connections a second to a local server: it runs out of ports after
about 33 s. Ten seconds in, two captures 5 s apart are saved; `timewait plan` and `timewait
report` then read them, and Chromium (inside the namespace: it reaches nothing) takes the
pictures. Writes docs/report-example.html, docs/img/report*.png, and prints the plan.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timewait.lab.experiments.base import set_sysctls
from timewait.lab.loadgen import LoadGen, LoadSpec
from timewait.lab.namespaces import run_in_netns, throwaway_netns
from timewait.live.capture import capture

DOCS = Path(__file__).resolve().parent.parent / "docs"


def main() -> int:
    with throwaway_netns() as ns, tempfile.TemporaryDirectory() as tmp:
        run_in_netns(ns, set_sysctls, {"ip_local_port_range": "40000 40999", "tcp_tw_reuse": "0"})
        with LoadGen(ns, LoadSpec(rate=30, duration=40)):
            time.sleep(10)  # a demo, not a test: the load's own clock
            capture(netns=ns).save(f"{tmp}/before.npz")
            time.sleep(5)
            capture(netns=ns).save(f"{tmp}/now.npz")
        files = ["--from", f"{tmp}/before.npz", "--from", f"{tmp}/now.npz"]
        tw = [sys.executable, "-m", "timewait"]
        subprocess.run([*tw, "plan", "--horizon", "120", *files], check=False)
        html = DOCS / "report-example.html"
        subprocess.run([*tw, "report", "-o", str(html), "--horizon", "120", *files], check=False)
    # Chromium as the report's tests drive it (its own namespace: it reaches nothing).
    sys.path.insert(0, str(DOCS.parent))
    import io

    from PIL import Image
    from tests.browser import open_page

    shown = open_page(html, width=1000, height=900, shots=("#plan",))
    page = Image.open(io.BytesIO(shown.png))
    page.crop((0, 0, page.width, min(page.height, 1150))).save(DOCS / "img" / "report.png")
    (DOCS / "img" / "report-plan.png").write_bytes(shown.shots["#plan"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
