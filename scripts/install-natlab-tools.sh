#!/usr/bin/env bash
# Installs the host tools the NAT lab drives (ip, nft, conntrack, ethtool,
# sysctl) with apt-get when one is missing. natlab itself installs nothing:
# it stops with an error naming this script. Needs root (as the lab does);
# without root it says so and exits 0, and installs nothing.
#   sudo scripts/install-natlab-tools.sh
set -euo pipefail

# tool:Debian package, as natlab's REQUIRED_TOOLS (natlab/src/cmd.rs).
tools=(ip:iproute2 nft:nftables conntrack:conntrack ethtool:ethtool sysctl:procps)

missing=()
for entry in "${tools[@]}"; do
    tool=${entry%%:*}
    if ! PATH="$PATH:/usr/sbin:/sbin:/usr/local/sbin" command -v "$tool" >/dev/null 2>&1; then
        missing+=("${entry#*:}")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "natlab tools: missing ${missing[*]}; not root, so not installing them"
    exit 0
fi
echo "natlab tools: installing ${missing[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq || echo "natlab tools: apt-get update failed; trying the install anyway" >&2
apt-get install -y -qq --no-install-recommends "${missing[@]}"
