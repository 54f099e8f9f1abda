"""`timewait report -o FILE.html` (issue 16 item 3): one self-contained page, checked as text and
in headless Chromium (tests/browser.py): every section and the key numbers from the same capture
as `doctor --json` and `plan --json`, no console errors, no network request, fits a phone,
prints."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from timewait.doctor import diagnose
from timewait.doctor.plan import plan
from timewait.render.html import Capture, render_html
from timewait.render.plan import plan_json

from .browser import Page, chromium_path, open_page
from .doctor.test_plan import GAP, T0, capture_at
from .test_cli_doctor import run

SECTIONS = ("summary", "findings", "pools", "destinations", "timers", "plan", "settings", "capture")


class _Tags(HTMLParser):
    """Every tag with its attributes, and the page's text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> _Tags:
    p = _Tags()
    p.feed(page)
    return p


@pytest.fixture(scope="module")
def exhausting() -> tuple[str, dict, dict]:
    """A destination at 30 conn/s into 1,000 ports, captured twice: the page, doctor's and
    plan's JSON of the same captures."""
    now, before = capture_at(T0), capture_at(T0 - GAP)
    d = diagnose(now, before)
    p = plan(now, d.analysis, horizon_s=120)
    from timewait.doctor import to_json

    page = render_html(d, p, capture=Capture(command="timewait report -o x.html"))
    return page, to_json(d), plan_json(p)


def key_numbers(doc: dict, pdoc: dict) -> list[str]:
    """What a reader looks for first, formatted as the page formats them."""
    dest = pdoc["destinations"][0]
    return [
        f"{doc['totals']['time_wait']:,}",  # TIME_WAIT
        f"{doc['ports']['capacity']:,}",  # usable ports
        f"{doc['churn_per_s']:,.1f}/s",
        doc["pools"]["worst"]["label"],
        doc["findings"][0]["title"],
        doc["findings"][0]["remedies"][0]["title"],
        dest["label"],
        f"{dest['as_is']['failures_per_s']:,.1f}",  # as-is failures/s
        f"{dest['options'][0]['headroom']:,}",  # the best option's ports left
        doc["snapshot"]["kernel"],
    ]


def test_every_section_and_key_number_is_on_the_page(exhausting: tuple[str, dict, dict]) -> None:
    page, doc, pdoc = exhausting
    tags = parse(page)
    ids = {a.get("id") for _, a in tags.tags}
    assert set(SECTIONS) <= ids
    text = " ".join(" ".join(tags.text).split())
    for number in key_numbers(doc, pdoc):
        assert number in text, number
    assert doc["findings"][0]["severity"] == "warning" and "WARNING" in text
    # one chart per planned destination, and the timers chart
    assert sum(tag == "svg" for tag, _ in tags.tags) == 1 + len(pdoc["destinations"])


def test_the_file_refers_to_nothing_outside_itself(exhausting: tuple[str, dict, dict]) -> None:
    page, _, _ = exhausting
    tags = parse(page)
    for tag, attrs in tags.tags:
        assert tag not in ("script", "link", "iframe", "img", "object", "embed"), tag
        for name in ("src", "href", "action", "xlink:href"):
            value = attrs.get(name)
            assert value is None or value.startswith("#"), (tag, name, value)
    assert not re.search(r"url\((?!#)|@import", page)  # url(#clip) is inside the page
    csp = [a["content"] for t, a in tags.tags if t == "meta" and a.get("http-equiv")]
    assert csp == ["default-src 'none'; style-src 'unsafe-inline'; img-src data:"]


def test_captured_text_is_escaped() -> None:
    now = dataclasses.replace(capture_at(T0), hostname='<img src="x">"&')  # type: ignore[call-arg]
    page = render_html(diagnose(now))
    assert '<img src="x">' not in page and "&lt;img src=&#34;x&#34;&gt;&#34;&amp;" in page


def test_no_plan_without_churn_and_a_healthy_page() -> None:
    from .doctor.helpers import snap

    page = render_html(diagnose(snap([])))
    ids = {a.get("id") for _, a in parse(page).tags}
    assert "plan" not in ids and "timers" not in ids and "destinations" not in ids
    assert 'id="status">HEALTHY<' in page


# -- the command -------------------------------------------------------------------------------


@pytest.fixture
def captures(tmp_path: Path) -> list[str]:
    a, b = tmp_path / "before.npz", tmp_path / "now.npz"
    capture_at(T0 - GAP).save(a)  # type: ignore[attr-defined]
    capture_at(T0).save(b)  # type: ignore[attr-defined]
    return [str(a), str(b)]


def test_report_writes_the_page_and_exits_as_the_doctor(
    captures: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "incident.html"
    args = ["--from", captures[0], "--from", captures[1]]
    r = run("report", "-o", str(out), *args)
    doctor = run("doctor", "--json", *args)
    assert r.exit_status == doctor.exit_status == 1, r.stderr
    assert r.stdout.startswith(f"report written to {out} (") and "warning" in r.stdout
    page = out.read_text()
    assert f"{json.loads(doctor.stdout)['totals']['time_wait']:,}" in page
    assert "timewait report -o" in page  # the command that made it
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_without_o_the_terminal_report_is_printed(captures: list[str]) -> None:
    r = run("report", "--from", captures[0], "--from", captures[1])
    assert r.exit_status == 1 and "timewait doctor  WARNING" in r.stdout
    assert "<html" not in r.stdout


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("incident.txt", "give a file name ending in .html"),
        ("/proc/version.html", "kernel's proc filesystem"),
        ("nodir/x.html", "directory nodir does not exist"),
    ],
)
def test_bad_output_is_a_one_line_usage_error(
    captures: list[str], tmp_path: Path, target: str, message: str
) -> None:
    os.chdir(tmp_path)
    r = run("report", "-o", target, "--from", captures[1])
    assert r.exit_status == 64 and message in r.stderr and len(r.stderr.splitlines()) == 1


def test_a_directory_named_html_is_refused(captures: list[str], tmp_path: Path) -> None:
    d = tmp_path / "x.html"
    d.mkdir()
    r = run("report", "-o", str(d), "--from", captures[1])
    assert r.exit_status == 64 and "is a directory" in r.stderr


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


# -- in a browser ------------------------------------------------------------------------------


def fits_a_phone(shown: Page) -> bool:
    """Laid out for the 390 px viewport (a page without a viewport tag gets a 980 px one) and
    nothing wider than it: wide tables scroll inside their box."""
    return shown.viewport_width == 390 and shown.scroll_width <= 390


needs_chromium = pytest.mark.skipif(
    chromium_path() is None and os.environ.get("CI") != "true",
    reason="chromium is not installed (make setup installs it as root)",
)


@pytest.mark.root
@needs_chromium
def test_the_page_in_chromium(exhausting: tuple[str, dict, dict], tmp_path: Path) -> None:
    page, doc, pdoc = exhausting
    f = tmp_path / "incident.html"
    f.write_text(page)
    shown = open_page(f, pdf=True)
    assert shown.console == [] and shown.requests == []
    text = " ".join(shown.text.split())
    for number in key_numbers(doc, pdoc):
        assert number in text, number
    assert fits_a_phone(shown)
    pages = len(re.findall(rb"/Type\s*/Page(?!s)", shown.pdf))
    assert shown.pdf.startswith(b"%PDF") and pages >= 2  # it prints (several A4/Letter pages)
    from PIL import Image

    img = Image.open(io.BytesIO(shown.png))
    assert img.width == 390 and img.height > 2000  # the whole page, not the first screen
    assert len(np.unique(np.asarray(img.convert("L")))) > 20  # drawn, not blank
    if os.environ.get("TIMEWAIT_UPDATE_DOCS"):  # the README's picture
        wide = open_page(f, width=1000, height=900)
        Path("docs/report.png").write_bytes(wide.png)


@pytest.mark.root
@needs_chromium
def test_the_browser_check_sees_what_it_should_refuse(tmp_path: Path) -> None:
    """The checks above can fail: a page that fetches and logs is caught."""
    f = tmp_path / "bad.html"
    f.write_text(
        '<!doctype html><html><body style="width:1200px"><img src="http://198.51.100.1/x.png">'
        "<script>console.error('boom')</script>bad</body></html>"
    )
    shown = open_page(f)
    assert shown.requests == ["http://198.51.100.1/x.png"]
    assert any("boom" in c for c in shown.console)
    assert not fits_a_phone(shown)


@pytest.mark.root
def test_a_live_namespace_report_counts_what_the_kernel_holds(tmp_path: Path) -> None:
    """On the kernel: the page's TIME_WAIT count is `ss`'s in that namespace."""
    import subprocess

    from timewait.lab.loadgen import LoadSpec, run_load
    from timewait.lab.namespaces import throwaway_netns

    out = tmp_path / "live.html"
    with throwaway_netns() as ns:
        run_load(ns, LoadSpec(count=137, duration=5))
        r = run("report", "-o", str(out), "--netns", ns, "--interval", "0")
        ss = subprocess.run(
            ["ip", "netns", "exec", ns, "ss", "-Htan", "state", "time-wait"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    assert r.exit_status in (0, 1), r.stderr
    kernel = len(ss.stdout.splitlines())
    assert kernel == 137
    cards = dict(
        re.findall(r'class="label">([^<]+)</div><div class="value">([^<]+)<', out.read_text())
    )
    assert cards["TIME_WAIT"] == f"{kernel:,}"
    assert f"netns:{ns}" in out.read_text()


# -- a router: NAT pools in the plan -----------------------------------------------------------


@pytest.fixture(scope="module")
def router_page() -> tuple[str, dict]:
    """A masquerading router (8 clients at 4 conn/s into 100 translated ports, Linux 6.1),
    captured twice: the page and plan's JSON."""
    from .doctor.nat_helpers import router_capture

    now, before = router_capture(10.0, 4.0, clients=8), router_capture(5.0, 4.0, clients=8)
    d = diagnose(now, before)
    p = plan(now, d.analysis, horizon_s=300)
    return render_html(d, p), plan_json(p)


def test_the_plan_section_shows_nat_pools_like_destinations(router_page: tuple[str, dict]) -> None:
    page, pdoc = router_page
    (pool,) = pdoc["nat"]
    plan_part = page[page.index('<section id="plan">') : page.index('<section id="settings">')]
    tags = parse(plan_part)
    text = " ".join(" ".join(tags.text).split())
    assert pool["label"] in text and "first drop" in text and "drops/s" in text
    assert "first EADDRNOTAVAIL" not in text  # no socket destination on a router
    assert ("article", {"class": "plan-dest", "data-kind": "nat"}) in tags.tags
    for o in (pool["as_is"], *pool["options"]):
        assert f"{o['failures_per_s']:,.1f}" in text and f"{o['usable']:,}" in text
    assert "hash to 4 of 4 addresses" in text  # the option's note
    assert pool["options"][0]["risk"][:60] in text
    # its chart: translated ports held and SYNs dropped, one line per option
    assert sum(tag == "svg" for tag, _ in tags.tags) == 1
    assert "SYNs dropped / s" in plan_part and "translated ports held" in plan_part


@pytest.mark.root
@needs_chromium
def test_the_router_page_in_chromium(router_page: tuple[str, dict], tmp_path: Path) -> None:
    page, pdoc = router_page
    f = tmp_path / "router.html"
    f.write_text(page)
    shown = open_page(f)
    assert shown.console == [] and shown.requests == []
    assert pdoc["nat"][0]["label"] in shown.text and fits_a_phone(shown)
