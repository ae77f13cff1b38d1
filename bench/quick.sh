#!/usr/bin/env bash
# quick.sh N SCENARIO [SERVERS] [BLOCKS]: one cell of the benchmark, one run, report to stdout.
#   PY=/tmp/venv/bin/python ./bench/quick.sh 10000 blocks explorerd 5
# SCENARIO: blocks | txs | batch | silent | e2e | logs (explorerd only).  SERVERS: comma list (default explorerd,ws,autobahn).
set -euo pipefail
cd "$(dirname "$0")/.."
N=$1; SCENARIO=${2:-blocks}; SERVERS=${3:-explorerd,ws,autobahn}; BLOCKS=${4:-5}
PY=${PY:-python3}
out=$(mktemp -d)
"$PY" bench/run.py --scenarios "$SCENARIO" --servers "$SERVERS" --clients "$N" --runs 1 --blocks "$BLOCKS" \
    --out "$out/RESULTS.md"
cat "$out/RESULTS.md"
