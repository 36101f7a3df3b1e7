#!/usr/bin/env bash
# Build the edgeECHO emulators: a static `edgeecho` binary and a copy of the static
# busybox, both next to this script, ready for the FROM-scratch Dockerfiles here.
# Idempotent: an output newer than its inputs is left alone. Works from any directory.
set -euo pipefail

here="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

CC="${CC:-gcc}"
BUSYBOX_SRC="${BUSYBOX_SRC:-/bin/busybox}"

if ! command -v "$CC" >/dev/null 2>&1; then
    echo "build.sh: compiler '$CC' not found (install gcc, e.g. apt-get install -y gcc libc6-dev)" >&2
    exit 1
fi

if [[ -f edgeecho && edgeecho -nt edgeecho.c && edgeecho -nt build.sh ]]; then
    echo "build.sh: edgeecho is up to date"
else
    echo "build.sh: compiling edgeecho with $CC"
    "$CC" -static -O2 -Wall -Wextra -Werror -o edgeecho.tmp edgeecho.c
    mv -f edgeecho.tmp edgeecho
fi

if [[ ! -x "$BUSYBOX_SRC" ]]; then
    echo "build.sh: $BUSYBOX_SRC is missing; install Debian's busybox-static (apt-get install -y busybox-static)" >&2
    exit 1
fi
if [[ -f busybox && busybox -nt "$BUSYBOX_SRC" ]]; then
    echo "build.sh: busybox is up to date"
else
    echo "build.sh: copying $BUSYBOX_SRC"
    cp -f "$BUSYBOX_SRC" busybox.tmp
    chmod 0755 busybox.tmp
    mv -f busybox.tmp busybox
fi
