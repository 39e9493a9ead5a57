#!/usr/bin/env bash
# Switchboard under attack: what one hostile client costs the server, and whether everyone
# else is still served (bench/RESULTS.md, "Under attack"). Uses bench/configs/switchboard.toml.
#
#   bench/attack.sh           the figures in RESULTS.md (about a minute)
#   bench/attack.sh --smoke   small numbers, seconds: keeps the scenarios from rotting
#   SERVER_BIN=path/to/switchboard bench/attack.sh   another build (say, an older commit)
#
# Scenarios (turn-attack): a flood of unauthenticated Allocates from many source ports,
# 10,000 TCP connections that never allocate (silent, then half of them with half a frame),
# and a TCP client that never reads beside a UDP client relaying at 100 packets/s.
# The server runs pinned to core $SERVER_CORE, the generator to $GEN_CORE; both on loopback,
# started here and stopped by PID. Results: bench/results/<date>-attack/attack.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
SERVER_CORE=${SERVER_CORE:-0}
GEN_CORE=${GEN_CORE:-1}
[ "$(nproc)" -lt 2 ] && GEN_CORE=$SERVER_CORE
OUT=${OUT:-$ROOT/bench/results/$(date -u +%Y%m%d-%H%M%S)-attack}
SECRET=bench-secret-0123456789abcdef
if [ $SMOKE = 1 ]; then
    FLOOD=(--requests 2000 --ports 200 --secs 1 --settle-secs 0.5)
    STALLED=(--connections 300 --settle-secs 0.5)
    SLOW=(--rate 2000 --secs 1)
else
    FLOOD=(--requests 200000 --ports 20000 --secs 20 --settle-secs 5)
    STALLED=(--connections 10000 --settle-secs 2)
    SLOW=(--rate 5000 --secs 5)
fi

mkdir -p "$OUT"
cargo build --release -q -p switchboard -p switchboard-bench
BIN=$ROOT/target/release
SERVER_BIN=${SERVER_BIN:-$BIN/switchboard}

PID=
stop() {
    if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
    PID=
}
trap stop EXIT INT TERM
start() {
    stop
    rm -rf "$OUT/sb-state"
    sed "s|^state_dir = .*|state_dir = \"$OUT/sb-state\"|" bench/configs/switchboard.toml > "$OUT/switchboard.toml"
    taskset -c "$SERVER_CORE" "$SERVER_BIN" run --config "$OUT/switchboard.toml" >> "$OUT/switchboard.log" 2>&1 &
    PID=$!
    for _ in $(seq 1 400); do
        if (exec 3<>/dev/tcp/127.0.0.1/3478) 2>/dev/null; then return 0; fi
        sleep 0.025
    done
    echo "error: Switchboard did not start (see $OUT/switchboard.log)" >&2
    exit 1
}
attack() { # attack SCENARIO ARGS...
    echo "== turn-attack $*" >&2
    taskset -c "$GEN_CORE" "$BIN/turn-attack" --server 127.0.0.1:3478 --secret $SECRET \
        --server-pid "$PID" --label switchboard "$@" >> "$OUT/attack.jsonl"
}

start; attack flood "${FLOOD[@]}"
start; attack stalled "${STALLED[@]}"
start; attack stalled --half-frames "${STALLED[@]}"
start; attack slow-reader "${SLOW[@]}"
stop
echo "bench: results in $OUT/attack.jsonl" >&2
