#!/bin/sh
# Make Debian's `chromium` available for the operator-console browser tests
# (tests/test_console_e2e.py drives it with Playwright through executable_path; Playwright's own
# browser download is never used: there is no internet). Idempotent: does nothing when
# /usr/bin/chromium (or $VOXMEM_CHROMIUM) already exists. CI runs as root; others get sudo.
set -eu
CHROMIUM="${VOXMEM_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium missing and apt-get unavailable: install Chromium and set VOXMEM_CHROMIUM" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "chromium missing: run 'apt-get install -y chromium' as root" >&2
        exit 1
    fi
fi
echo "installing Debian package 'chromium'" >&2
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    chromium fonts-dejavu-core >/dev/null
[ -x "$CHROMIUM" ]
