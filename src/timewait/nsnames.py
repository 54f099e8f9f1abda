"""How a network namespace is named for people: one rule for discovery (live.discover), the
doctor across namespaces (doctor.fleet), `top` and the exporter. Pure, standard library only.

A namespace's labels (Snapshot.labels) say what it is -- `kind` is one of KINDS -- and
`display_name()` picks the most useful name: a Kubernetes pod as NAMESPACE/NAME, a container by
its name (or short id), an `ip netns` name, the main process as COMM[PID], "host" for the
machine's own, else the inode in brackets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

KIND_HOST: Final = "host"
KIND_POD: Final = "pod"
KIND_CONTAINER: Final = "container"
KIND_NETNS: Final = "netns"
KIND_PROCESS: Final = "process"
KIND_MOUNT: Final = "mount"  # a bind mount only: no name, no process
KINDS: Final = (KIND_HOST, KIND_POD, KIND_CONTAINER, KIND_NETNS, KIND_PROCESS, KIND_MOUNT)

# Every label key discovery may set (Snapshot.labels, the doctor's JSON `labels`).
LABEL_KEYS: Final = (
    "netns", "inode", "kind", "host", "namespace", "pod", "pod_uid", "container",
    "container_id", "runtime", "comm", "pid", "host_network",
)  # fmt: skip


def display_name(labels: Mapping[str, str]) -> str:
    """The most useful name in `labels` ("prod/checkout-6d4f", "web", "nginx[1234]", "host")."""
    kind = labels.get("kind", "")
    if kind == KIND_HOST:
        return "host"
    if kind == KIND_POD:
        if labels.get("pod"):
            return f"{labels.get('namespace', '?')}/{labels['pod']}"
        return f"pod {labels.get('pod_uid', '?')[:8]}"
    if kind == KIND_CONTAINER:
        return labels.get("container") or labels.get("container_id", "?")
    if kind == KIND_PROCESS:
        return f"{labels.get('comm', '?')}[{labels.get('pid', '?')}]"
    return labels.get("netns", "?")
