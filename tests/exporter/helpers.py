"""Running `timewait exporter` as a real process for the namespace tests, and reading /metrics."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from prometheus_client.parser import text_string_to_metric_families

TIMEWAIT = str(Path(sys.executable).with_name("timewait"))


def free_port() -> int:
    """A port free on 127.0.0.1 now. `timewait exporter --listen` refuses port 0, so tests that
    start the command pick one; they run in a namespace of their own (conftest.py), where
    nothing else can take it before the exporter binds it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(url: str, timeout: float = 30.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        assert r.status == 200
        return r.read().decode()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """{(sample name, labels): value} of an exposition."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def sample(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB, from /proc/PID/status."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(rest.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


class Exporter:
    """`timewait exporter --listen 127.0.0.1:PORT ARGS` with stderr in a file (so a long run
    never blocks on a full pipe); `.url` once it serves. Always stopped on exit."""

    def __init__(self, args: Sequence[str], log: Path, prefix: Sequence[str] = ()) -> None:
        self.log = log
        self._log_f: IO[str] = log.open("w")
        self.proc = subprocess.Popen(
            [*prefix, TIMEWAIT, "exporter", "--listen", f"127.0.0.1:{free_port()}", *args],
            stdout=subprocess.DEVNULL,
            stderr=self._log_f,
            text=True,
        )
        try:
            self.url = self._wait_url()
        except BaseException:
            self.stop()
            raise

    def _wait_url(self, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text()
            for line in text.splitlines():
                if "serving http://" in line:
                    return line.split()[4]
            if self.proc.poll() is not None:
                raise AssertionError(f"exporter exited {self.proc.returncode}: {text}")
            time.sleep(0.02)
        raise AssertionError(f"exporter did not start: {self.log.read_text()}")

    def stop(self) -> int:
        """SIGTERM; returns the exit status (killed after 10 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_f.close()
        return self.proc.returncode


@contextlib.contextmanager
def exporter(args: Sequence[str], log: Path, prefix: Sequence[str] = ()) -> Iterator[Exporter]:
    e = Exporter(args, log, prefix)
    try:
        yield e
    finally:
        e.stop()
