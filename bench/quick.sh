#!/usr/bin/env bash
# quick.sh N CHANNELS BLOCKS [PROFILE]: one explorerd hub run against N clients; prints the server's lines
# and the loadgen summary line.
set -euo pipefail
cd "$(dirname "$0")"
N=$1; CH=$2; B=$3; PROF=${4:-}
PY=${PY:-python3}
out=$(mktemp -d)
$PY hubserver.py --clients "$N" --blocks "$B" ${PROF:+--profile $PROF} > "$out/server" &
spid=$!
until grep -q listening "$out/server" 2>/dev/null; do sleep 0.05; done
port=$(grep listening "$out/server" | python3 -c 'import json,sys; print(json.load(sys.stdin)["port"])')
node loadgen.mjs --url "ws://127.0.0.1:$port/v1/stream" --clients "$N" --channels "$CH" --duration $((B + 4)) --hosts 4 > "$out/load" &
lpid=$!
wait $spid || true
wait $lpid || true
python3 analyze.py "$out/server" "$out/load"
