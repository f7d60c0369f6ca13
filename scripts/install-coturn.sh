#!/usr/bin/env bash
# Installs coturn's `turnserver` (Debian package coturn), the real STUN
# server that `dcutr netcheck`'s loopback test and `natlab matrix --stun`
# run against:
#   sudo scripts/install-coturn.sh
#   cargo test -p dcutr-cli --test netcheck -- --ignored
# The package's own service is not started: the test runs its own
# turnserver on 127.0.0.1 and 127.0.0.2 and stops it. Without root this
# prints why it cannot install and exits 0, so callers can go on and the
# test reports itself skipped.
set -euo pipefail

if command -v turnserver >/dev/null 2>&1; then
    echo "coturn: turnserver already installed ($(command -v turnserver))"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "coturn: not installed (installing it needs root: sudo $0)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "coturn: not installed (no apt-get; install your system's coturn package)"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d keeps the package from starting its system service.
policy=/usr/sbin/policy-rc.d
created_policy=false
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    created_policy=true
fi
trap '[ "$created_policy" = true ] && rm -f "$policy"' EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends coturn >/dev/null
echo "coturn: installed $(turnserver --version 2>/dev/null | head -1) at $(command -v turnserver)"
