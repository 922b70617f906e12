#!/usr/bin/env bash
# Merges the shard reports OUT/shard-* into OUT/merged and decides the gate:
#   scripts/ci/certify-merge.sh OUT
# exit 0 gate passed, 1 gate failed, 2 the shards are not one run's complete cover.
set -euo pipefail
iocane=${IOCANE:-iocane}
out=$1
exec "$iocane" certify merge "$out"/shard-* --report "$out/merged"
