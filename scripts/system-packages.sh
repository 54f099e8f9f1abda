#!/usr/bin/env bash
# Installs the system packages the tool and its tests need, when they are missing and we are root.
# Debian names; apt-get update runs once, only if something is missing.
set -euo pipefail
need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v ss >/dev/null 2>&1 || need+=(iproute2)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v conntrack >/dev/null 2>&1 || [ -x /usr/sbin/conntrack ] || need+=(conntrack)  # NAT tests: conntrack -L
command -v tmux >/dev/null 2>&1 || need+=(tmux)          # `timewait top` is tested in tmux
command -v setpriv >/dev/null 2>&1 || need+=(util-linux) # unprivileged-run tests
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)  # lab: nginx-keepalive
command -v promtool >/dev/null 2>&1 || need+=(prometheus)   # exporter tests: prometheus + promtool
command -v chromium >/dev/null 2>&1 || need+=(chromium)     # report tests: the HTML in a browser
command -v bpftrace >/dev/null 2>&1 || need+=(bpftrace)     # `timewait trace`, doctor --trace
command -v bpftool >/dev/null 2>&1 || [ -x /usr/sbin/bpftool ] || need+=(bpftool)  # trace tests: no probe left
# mypyc compiles the packet simulator's hot path (setup.py): a C compiler and Python's headers.
command -v gcc >/dev/null 2>&1 || need+=(gcc libc6-dev)
"${PY:-python3}" -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null \
    || need+=(python3-dev)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
    echo "timewait: missing system packages: ${need[*]} (run as root to install them, or: apt-get install ${need[*]})" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# Packages like nginx and prometheus start their daemon on install; the lab and tests start their
# own instances in private namespaces, so forbid service starts for the duration (policy-rc.d).
created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    created_policy=1
fi
trap '[ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
