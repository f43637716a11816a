#!/bin/sh
# Make `promtool` available for `make test` (tests/test_ops_configs.py checks and unit-tests the
# alert rules with it). Idempotent: does nothing when promtool is already on PATH. Debian's
# `prometheus` package ships promtool; CI machines run as root, others get sudo when present.
set -eu
if command -v promtool >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "promtool missing and apt-get unavailable: install Prometheus's promtool (>= 2.30) on PATH" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "promtool missing: run 'apt-get install -y prometheus' as root" >&2
        exit 1
    fi
fi
echo "installing promtool (Debian package 'prometheus')" >&2
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
# --no-install-recommends: promtool is all we need, not the node exporter and friends.
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v promtool >/dev/null 2>&1
