"""Doctor analysis speed: 200,000 and 1,000,000 synthetic TIME_WAIT rows (issue 4 item 3).

Reference in the same run: the classic `ss | awk | sort | uniq -c` per-destination count done
in Python over text lines (what users do today, minus the kernel dump), on the same rows.
"""

from __future__ import annotations

import time

import numpy as np

from timewait.config import KernelConfig
from timewait.doctor import diagnose
from timewait.doctor.analysis import analyze
from timewait.snapshot import AF_INET, SOCKET_DTYPE, TCP_TIME_WAIT, Snapshot, addr_bytes, addr_str


def rows(n: int, n_dest: int = 1000) -> np.ndarray:
    rng = np.random.default_rng(1)
    arr = np.zeros(n, dtype=SOCKET_DTYPE)
    arr["family"] = AF_INET
    arr["state"] = TCP_TIME_WAIT
    arr["timer"] = 3
    arr["minisock"] = True
    arr["sport"] = rng.integers(32768, 61000, n)
    arr["dport"] = rng.choice([80, 443, 5432], n)
    arr["src"] = np.frombuffer(addr_bytes("198.18.0.1"), dtype="V16")[0]
    dst = np.zeros((n, 16), dtype=np.uint8)
    dst[:, 10:12] = 255
    d = rng.integers(0, n_dest, n)
    dst[:, 12], dst[:, 13], dst[:, 14], dst[:, 15] = 198, 19, d >> 8, d & 255
    arr["dst"] = dst.view("V16").ravel()
    arr["expires_ms"] = rng.integers(0, 60_000, n)
    return arr


def best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> list[str]:
    out = []
    for n in (200_000, 1_000_000):
        s = Snapshot(sockets=rows(n), config=KernelConfig(), kernel="6.18.44")
        t_an = best(lambda s=s: analyze(s))
        t_dx = best(lambda s=s: diagnose(s))
        out.append(f"{n:>9,} rows: analyze {t_an * 1000:7.1f} ms, diagnose {t_dx * 1000:7.1f} ms")
        if n == 200_000:
            # what `awk '{print $4, $5}' | sort | uniq -c` does, in Python over text lines
            lines = [
                f"TIME-WAIT 0 0 {addr_str(r['src'])}:{r['sport']} {addr_str(r['dst'])}:{r['dport']}"
                for r in s.sockets[:n]
            ]

            def uniq(lines: list[str] = lines) -> dict[tuple[str, str], int]:
                counts: dict[tuple[str, str], int] = {}
                for line in lines:
                    f = line.split()
                    key = (f[3].rsplit(":", 1)[0], f[4])
                    counts[key] = counts.get(key, 0) + 1
                return counts

            t_ref = best(uniq)
            out.append(
                f"          text group-by (awk|sort|uniq -c in Python) {t_ref * 1000:7.1f} ms "
                f"-> ratio analyze/text {t_an / t_ref:.2f}"
            )
    return out


if __name__ == "__main__":
    print("\n".join(main()))
