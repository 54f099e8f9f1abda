"""`timewait lab run snat-exhaustion` in its quick form: kernel and model within 5%, and the
doctor on the router names the exhausted pool with a critical finding (issue 15)."""

from __future__ import annotations

import pytest

from .test_experiments import _run

pytestmark = pytest.mark.root


def test_snat_exhaustion_kernel_and_model_agree_and_doctor_is_critical() -> None:
    r = _run("snat-exhaustion")
    assert not r.defects
    churn, held = r.kernel["churn (TIME_WAIT)"], r.kernel["held open (ESTABLISHED)"]
    ports = 100  # quick form: 40000-40099
    # closing entries: the pool fills and stays full of TIME_WAIT, connections go on (6.5+)
    assert churn["time_wait_entries"] >= 0.95 * ports and churn["connections"] > 2 * ports
    # held open: every port taken, then SYNs dropped, counted by the kernel
    assert held["entries"] == ports and held["insert_failed"] >= held["drops"] > 0
    assert held["first_drop_s"] == pytest.approx(1.0, rel=0.05)  # ports / R = 100 / 100
    assert "critical nat-port-exhaustion" in held["doctor"]
    assert held["doctor_pool"] == "NAT 198.18.0.1 -> 198.18.0.2:80/tcp"
