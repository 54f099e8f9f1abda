"""Headless Chromium for the report's tests, driven over the DevTools protocol on a pipe.

One browser per `open_page()`: it runs inside a throwaway network namespace that has only
loopback (nothing it tries can leave the machine, and Chromium's own update pings fail there),
loads a file, and reports what a reader's browser would see: the DOM's text, every console
message and browser log entry (a CSP refusal, a failed load), every network request the page
made, the page's width against the viewport (does it fit a phone?), a PNG and a PDF.

--remote-debugging-pipe: the browser reads commands on fd 3 and writes replies and events on
fd 4, each a JSON message ending in NUL (chromium's DevToolsPipeHandler).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from timewait.lab.namespaces import exec_dies_with_parent, throwaway_netns

TIMEOUT_S = 90.0  # per message; a loaded 2-core machine starts Chromium in 5-15 s


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Page:
    text: str = ""  # document.body.innerText
    html: str = ""  # the DOM, serialized
    console: list[str] = field(default_factory=list)  # console calls, log entries, exceptions
    requests: list[str] = field(default_factory=list)  # URLs the page asked the network for
    scroll_width: int = 0
    viewport_width: int = 0
    png: bytes = b""
    pdf: bytes = b""
    shots: dict[str, bytes] = field(default_factory=dict)  # CSS selector -> PNG of that element


class _Pipe:
    def __init__(self, wfd: int, rfd: int) -> None:
        self.wfd, self.rfd = wfd, rfd
        self.buf = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self.wfd, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            self.events.append(reply)

    def wait_event(self, name: str) -> dict[str, Any]:
        for i, e in enumerate(self.events):
            if e.get("method") == name:
                return self.events.pop(i)
        while True:
            e = self._read()
            if e.get("method") == name:
                return e
            self.events.append(e)

    def _read(self) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT_S
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.rfd], [], [], left)[0]:
                raise TimeoutError(f"Chromium did not answer within {TIMEOUT_S:.0f} s")
            chunk = os.read(self.rfd, 1 << 20)
            if not chunk:
                raise EOFError("Chromium closed its DevTools pipe (it crashed or exited)")
            self.buf += chunk
        msg, _, self.buf = self.buf.partition(b"\0")
        out: dict[str, Any] = json.loads(msg)
        return out


def _collect(events: list[dict[str, Any]], page: Page) -> None:
    for e in events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.consoleAPICalled":
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"])
            page.console.append(f"console.{p['type']}: {args}")
        elif m == "Log.entryAdded":
            entry = p["entry"]
            page.console.append(f"{entry['level']} ({entry['source']}): {entry['text']}")
        elif m == "Runtime.exceptionThrown":
            page.console.append(f"exception: {p['exceptionDetails'].get('text', '')}")
        elif m == "Network.requestWillBeSent":
            url = p["request"]["url"]
            if not url.startswith(("file:", "data:", "about:")):
                page.requests.append(url)


def open_page(
    path: str | Path,
    *,
    width: int = 390,
    height: int = 844,
    pdf: bool = False,
    shots: tuple[str, ...] = (),
) -> Page:
    """Load `path` in Chromium at a phone's size; see the module doc for what comes back.
    `shots`: CSS selectors of elements to picture on their own."""
    exe = chromium_path()
    assert exe, "chromium is not installed (scripts/system-packages.sh installs it)"
    url = Path(path).resolve().as_uri()
    page = Page()
    cmd_r, cmd_w = os.pipe()
    res_r, res_w = os.pipe()
    with (
        throwaway_netns("twtest-chrome-") as ns,
        tempfile.TemporaryDirectory() as profile,
        tempfile.TemporaryFile() as log,
    ):
        argv = [
            "ip", "netns", "exec", ns, exe,
            "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-extensions", "--hide-scrollbars",
            f"--user-data-dir={profile}", "about:blank",
        ]  # fmt: skip
        dies_with_us = exec_dies_with_parent()

        def preexec() -> None:  # the pipe's ends as fds 3 and 4 (dup2 makes them inheritable)
            dies_with_us()
            # Copies first: a pipe end may already be fd 3 or 4, and dup2(3, 3) would leave
            # its close-on-exec flag set.
            a, b = os.dup(cmd_r), os.dup(res_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        # close_fds=False: closing runs after preexec_fn and would close 3 and 4 again; Python's
        # own descriptors are not inheritable, so nothing else reaches the browser.
        proc = subprocess.Popen(
            argv, close_fds=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=log, start_new_session=True, preexec_fn=preexec,
        )  # fmt: skip
        os.close(cmd_r)
        os.close(res_w)
        pipe = _Pipe(cmd_w, res_r)
        try:
            target = pipe.send("Target.createTarget", url="about:blank")["targetId"]
            s = pipe.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                pipe.send(f"{domain}.enable", s)
            pipe.send(
                "Emulation.setDeviceMetricsOverride", s,
                width=width, height=height, deviceScaleFactor=1, mobile=width < 600,
            )  # fmt: skip
            pipe.send("Page.navigate", s, url=url)
            pipe.wait_event("Page.loadEventFired")

            def js(expr: str) -> Any:
                reply = pipe.send("Runtime.evaluate", s, expression=expr, returnByValue=True)
                return reply["result"].get("value")

            page.text = js("document.body.innerText")
            page.html = js("document.documentElement.outerHTML")
            page.scroll_width = js("document.documentElement.scrollWidth")
            page.viewport_width = js("window.innerWidth")
            shot = pipe.send("Page.captureScreenshot", s, format="png", captureBeyondViewport=True)
            page.png = base64.b64decode(shot["data"])
            for sel in shots:
                box = js(
                    f"(r => [r.x, r.y + scrollY, r.width, r.height])"
                    f"(document.querySelector({json.dumps(sel)}).getBoundingClientRect())"
                )
                x, y, w, h = box
                clip = {"x": x, "y": y, "width": w, "height": h, "scale": 1}
                shot = pipe.send("Page.captureScreenshot", s, format="png", clip=clip,
                                 captureBeyondViewport=True)  # fmt: skip
                page.shots[sel] = base64.b64decode(shot["data"])
            if pdf:
                page.pdf = base64.b64decode(pipe.send("Page.printToPDF", s)["data"])
            with contextlib.suppress(Exception):
                pipe.send("Browser.close")
        except (EOFError, TimeoutError, BrokenPipeError) as e:
            log.seek(0)
            tail = log.read().decode(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(f"{e}; chromium said: {' / '.join(tail)}") from None
        finally:
            _collect(pipe.events, page)
            os.close(cmd_w)
            os.close(res_r)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # its zygote and renderers
    return page
