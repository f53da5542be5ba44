#!/usr/bin/env bash
# The project's test command (the README's second command; `.ci/run` calls exactly this).
# It installs what the tests need on a fresh machine, then runs every test in release mode,
# because the simulator and the cluster tests need optimised code to finish in time.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages some tests use; installed only when missing, so repeat runs stay offline.
need_packages=()
command -v ip >/dev/null 2>&1 || need_packages+=(iproute2)
# tests/faults.rs partitions nodes in network namespaces with nftables rules (as root); without
# `nft` it falls back to its TCP proxy.
command -v nft >/dev/null 2>&1 || need_packages+=(nftables)
# Debian's prometheus package brings both `prometheus` and `promtool`, which
# tests/observability.rs runs against a real cluster (it fails under CI without them).
{ command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || need_packages+=(prometheus)
if [ ${#need_packages[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_packages[@]}" >/dev/null
  else
    echo "note: missing ${need_packages[*]}; tests that need them will skip with a reason" >&2
  fi
fi

cargo test --release "$@"
