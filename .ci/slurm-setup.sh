#!/usr/bin/env bash
# Install a one-node Slurm (slurmctld, slurmd, munge, client tools) from Debian's packages.
# Safe to rerun: apt-get install is a no-op when the packages are already present, and the
# package index is only refreshed when something is missing. Needs root (or sudo) and apt.
set -euo pipefail

PACKAGES=(slurmctld slurmd munge slurm-client)

missing() {
    local pkg
    for pkg in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || echo "$pkg"
    done
}

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

if [ -z "$(missing)" ]; then
    echo "slurm-setup: ${PACKAGES[*]} already installed"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
# Packages must not start their daemons inside containers/CI; scripts/slurm/cluster.sh starts them.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod +x "$policy"
    created_policy=1
fi
cleanup() { if [ "$created_policy" -eq 1 ]; then $SUDO rm -f "$policy"; fi; }
trap cleanup EXIT

$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${PACKAGES[@]}"
echo "slurm-setup: installed ${PACKAGES[*]}"
