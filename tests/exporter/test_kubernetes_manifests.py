"""deploy/kubernetes/ (issue 14): every manifest validates, the DaemonSet asks for what
--all-netns needs and nothing more, and the pieces fit together.

Validation, what kubeconform -strict would do, offline:
- DaemonSet and Service: `kubernetes-validate` (PyPI; dev dependency) against the Kubernetes
  1.37 JSON schemas it ships, in strict mode (an unknown field, a typo such as `hostPid`, is
  an error), through `jsonschema`. kubeconform itself is a Go binary, not on PyPI.
- PodMonitor and ServiceMonitor (CRDs, which kubernetes-validate has no schema for): a small
  strict JSON schema of the fields we use (tests/exporter/schemas/monitoring.coreos.com-v1.json)
  with `jsonschema`.
- Cross-checks no schema does: selectors match the pod template's labels, named ports exist,
  the exporter listens where the probes and monitors look, honorLabels keeps the pod labels.
And on the real kernel: `doctor --all-netns` with exactly the DaemonSet's capabilities sees
every namespace that full root sees, and with one of them dropped it does not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
SCHEMAS = Path(__file__).resolve().parent / "schemas" / "monitoring.coreos.com-v1.json"
K8S_VERSION = "1.37.0"
CAPS = ["SYS_ADMIN", "SYS_PTRACE"]


def _need(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        reason = f"{module} missing (a dev dependency: `make test` installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; under CI=true this test must run")
        pytest.skip(reason)


def docs() -> dict[str, dict[str, Any]]:
    yaml = _need("yaml")
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            out[doc["kind"]] = doc
    return out


def k8s_errors(doc: dict[str, Any]) -> list[str]:
    _need("kubernetes_validate")
    from kubernetes_validate import utils

    try:
        utils.validate(doc, K8S_VERSION, strict=True)
    except utils.ValidationError as e:
        return [str(e.message)]
    return []


def crd_errors(doc: dict[str, Any]) -> list[str]:
    jsonschema = _need("jsonschema")
    schema = json.loads(SCHEMAS.read_text())
    sub = {**schema, "$ref": f"#/$defs/{doc['kind']}"}
    v = jsonschema.Draft202012Validator(sub)
    return [f"{'/'.join(map(str, e.path))}: {e.message}" for e in v.iter_errors(doc)]


def test_every_kind_is_there() -> None:
    assert set(docs()) == {"DaemonSet", "Service", "PodMonitor", "ServiceMonitor"}


@pytest.mark.parametrize("kind", ["DaemonSet", "Service"])
def test_builtin_kinds_validate_strictly(kind: str) -> None:
    assert k8s_errors(docs()[kind]) == []


@pytest.mark.parametrize("kind", ["PodMonitor", "ServiceMonitor"])
def test_monitors_validate_strictly(kind: str) -> None:
    assert crd_errors(docs()[kind]) == []


def test_the_validators_catch_mistakes() -> None:
    """A typo, a wrong type and a missing field fail: the checks above can fail."""
    ds = docs()["DaemonSet"]
    typo = json.loads(json.dumps(ds))
    pod = typo["spec"]["template"]["spec"]
    pod["hostPid"] = pod.pop("hostPID")
    assert k8s_errors(typo)
    wrong = json.loads(json.dumps(ds))
    wrong["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "19977"
    assert k8s_errors(wrong)
    pm = json.loads(json.dumps(docs()["PodMonitor"]))
    pm["spec"]["podMetricsEndpoints"][0]["honourLabels"] = True
    assert crd_errors(pm)
    pm = json.loads(json.dumps(docs()["PodMonitor"]))
    pm["spec"]["podMetricsEndpoints"][0]["interval"] = "30 seconds"
    assert crd_errors(pm)
    del pm["spec"]["selector"]
    assert crd_errors(pm)


def _container() -> dict[str, Any]:
    (c,) = docs()["DaemonSet"]["spec"]["template"]["spec"]["containers"]
    return c


def test_daemonset_asks_for_what_all_netns_needs_and_no_more() -> None:
    pod = docs()["DaemonSet"]["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    assert "hostNetwork" not in pod  # it serves on the pod network; it enters the node's
    assert pod["automountServiceAccountToken"] is False  # never talks to the API server
    sc = _container()["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"], "add": CAPS}
    mounts = {m["mountPath"]: m for m in _container()["volumeMounts"]}
    assert all(m.get("readOnly") for p, m in mounts.items() if p != "/tmp")
    assert mounts["/run/netns"]["mountPropagation"] == "HostToContainer"


def test_the_pieces_fit_together() -> None:
    d = docs()
    ds, svc, pm, sm = d["DaemonSet"], d["Service"], d["PodMonitor"], d["ServiceMonitor"]
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert pm["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"]["matchNames"] == [svc["metadata"]["namespace"]]
    c = _container()
    (port,) = c["ports"]
    args = c["args"]
    assert args[:2] == ["exporter", "--all-netns"]
    listen = next(a.split("=", 1)[1] for a in args if a.startswith("--listen="))
    assert listen == f"0.0.0.0:{port['containerPort']}"  # reachable from Prometheus
    pods_dir = next(a.split("=", 1)[1] for a in args if a.startswith("--pods-dir="))
    assert pods_dir in {m["mountPath"] for m in c["volumeMounts"]}
    assert os.path.join(os.path.dirname(pods_dir), "containers") in {
        m["mountPath"] for m in c["volumeMounts"]}  # container names  # fmt: skip
    assert c["readinessProbe"]["httpGet"]["port"] == port["name"]
    assert svc["spec"]["ports"][0]["targetPort"] == port["name"]
    for ep in (*pm["spec"]["podMetricsEndpoints"], *sm["spec"]["endpoints"]):
        assert ep["port"] == port["name"] and ep["path"] == "/metrics"
        assert ep["honorLabels"] is True  # keep the exporter's namespace/pod/container


def test_the_exporter_accepts_the_daemonset_args() -> None:
    """The args parse (click), up to the point where the exporter would start serving."""
    from click.testing import CliRunner

    from timewait.cli import cli

    args = _container()["args"]
    r = CliRunner().invoke(cli, [*args, "--help"])
    assert r.exit_code == 0, r.output


TIMEWAIT = str(Path(sys.executable).with_name("timewait"))


@pytest.mark.root
def test_the_daemonset_capabilities_are_the_least_that_work() -> None:
    """As root with only SYS_ADMIN and SYS_PTRACE (setpriv's bounding set), `doctor
    --all-netns` finds every namespace full root finds, a pod's by /proc alone included;
    without SYS_PTRACE it cannot name pods, without SYS_ADMIN it stops with one line."""
    from tests.lab.helpers import need_root

    need_root()
    from timewait.lab.fakenode import FakeNode, Pod

    def run(caps: list[str]) -> subprocess.CompletedProcess[str]:
        bound = ["setpriv", f"--bounding-set=-all,{','.join('+' + c.lower() for c in caps)}",
                 "--"] if caps else []  # fmt: skip
        return subprocess.run(
            [*bound, TIMEWAIT, "doctor", "--all-netns", "--json", "--interval", "0",
             "--pods-dir", node.roots.pods],
            capture_output=True, text=True, check=False, timeout=300,
        )  # fmt: skip

    def names(r: subprocess.CompletedProcess[str]) -> set[str]:
        assert r.stdout, r.stderr
        return {e["name"] for e in json.loads(r.stdout)["namespaces"]
                if e["inode"] in node.expected}  # fmt: skip

    with FakeNode(pods=(Pod(namespace="shop", name="cart-0", time_waits=3),),
                  unnamed=(2,)) as node:  # fmt: skip
        full = names(run([]))
        assert len(full) == 2
        assert names(run(CAPS)) == full
        # without SYS_PTRACE /proc/PID/ns/net of the node's processes stays closed: the pod is
        # found through /run/netns but not named, the unnamed namespace not found at all
        blind = names(run(["SYS_ADMIN"]))
        assert "shop/cart-0" in full and "shop/cart-0" not in blind
        assert len(blind) < len(full)
        r = run(["SYS_PTRACE"])
        assert r.returncode == 3 and "needs root" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
