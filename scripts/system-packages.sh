#!/usr/bin/env bash
# Installs the system packages the tool and its tests need, when they are missing and we are root.
# Debian names; apt-get update runs once, only if something is missing.
set -euo pipefail
need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v ss >/dev/null 2>&1 || need+=(iproute2)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v tmux >/dev/null 2>&1 || need+=(tmux)          # `timewait top` is tested in tmux
command -v setpriv >/dev/null 2>&1 || need+=(util-linux) # unprivileged-run tests
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
    echo "timewait: missing system packages: ${need[*]} (run as root to install them, or: apt-get install ${need[*]})" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
