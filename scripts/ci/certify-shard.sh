#!/usr/bin/env bash
# One shard of a sharded certification (a CI matrix job or a Slurm array task):
#   scripts/ci/certify-shard.sh MODEL I N OUT [certify flags...]
# writes OUT/shard-I (report.json, junit.xml, summary.md, curve.svg, counterexamples/).
# The shard's own gate verdict (exit 1) is not a failure here: the merge decides the gate
# over all shards. Exit 2 (an input error) and 130 (interrupted) fail the job.
set -euo pipefail
iocane=${IOCANE:-iocane}
model=$1 index=$2 count=$3 out=$4
shift 4
status=0
"$iocane" certify "$model" --shard "$index/$count" --report "$out/shard-$index" --quiet "$@" || status=$?
if [ "$status" -gt 1 ]; then exit "$status"; fi
