#!/usr/bin/env bash
# Soak: the release binary under a realistic mix for a long time, and a verdict on whether
# it holds steady and cleans up after itself (bench/RESULTS.md, "Soak").
#
#   bench/soak.sh                 one hour (3600 s)
#   bench/soak.sh --minutes 20    or --secs 1200: another duration
#   bench/soak.sh --smoke         two minutes, small numbers (CI)
#   bench/soak.sh --smoke --leak  self-test: the clients do not leave at the end; must FAIL
#
# The mix (soak-load): ROOMS rooms of two whose peers join and leave over native WSS
# signaling all along (offer, answer, candidates; leaving by `leave`, by a close, by a
# dropped connection, or by `leave` and a new join on the same socket); TURN_SHARE of them,
# evenly spread, allocate a TURN relay with the credential of their welcome, over UDP, TCP
# and TLS in turn, and release it, refresh it, or leave it to be revoked when they leave;
# MEDIA_PAIRS rooms of two relaying ChannelData to each other at MEDIA_RATE packets/s per
# allocation over UDP, TCP and TLS in turn; EXPIRY_SLOTS allocations left to expire (600 s,
# the server's shortest lifetime: only in runs of 620 s or more, so not in --smoke or
# --minutes 10); a config reload (SIGHUP, TTL and secret order swapped) every RELOAD_S s.
# Every SAMPLE_S seconds: the server's RSS (/proc/PID/status) and open fds (/proc/PID/fd),
# allocations, rooms, peers and connections (the admin listener's /metrics), the clients'
# counters and errors.
#
# Pass: after the warm-up (the first 20 % of the run; at least two samples after it) RSS
# and fds stay within 5 % of their median (or 2 MiB / FD_FLOOR fds, whichever is more:
# 8, and 16 in --smoke), and the fds that no connection or relay socket explains stay
# within 8 of their idle count; every
# part of the mix happened (allocations over UDP, TCP and TLS, refreshes, releases,
# verified revocations, media received over each transport, reloads applied, expiries
# when the run is long enough); no client error (a failed connect, join, allocation,
# refresh, release or channel bind, a signal unanswered, a socket or TURN connection
# closed by the server, a departed peer's relay not freed within the grace period + 3 s,
# an expired one not freed within 3 s, a reload not applied); no refusal, drop or forced
# close counted by the server; relayed packets lost at most 0.1 %; every reload applied
# and no ERROR in the server's log; and once the clients stopped and the grace period
# passed: no allocation, peer or room left and fds back to their idle count.
#
# The server runs on loopback with its own state dir and ports (HTTPS 28443, TURN 23478
# UDP/TCP, TURN/TLS 25349, admin 29478; override with HTTPS_PORT, TURN_PORT, TURNS_PORT,
# ADMIN_PORT), unpinned, and is stopped by PID. Results: bench/results/<date>-soak/:
# samples.jsonl, summary.json (the checks), soak.svg (the plot), the server's log and
# configs. Exits 1 when the verdict is FAIL (or the run could not be made).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
SMOKE=0
SECS=
LEAK=()
while [ $# -gt 0 ]; do
    case $1 in
        --smoke) SMOKE=1 ;;
        --secs) SECS=${2:?--secs needs a number}; shift ;;
        --minutes) SECS=$(( ${2:?--minutes needs a number} * 60 )); shift ;;
        --leak) LEAK=(--leak) ;;
        -h|--help) usage; exit 0 ;;
        *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ $SMOKE = 1 ]; then
    : "${SECS:=120}" "${ROOMS:=20}" "${LIFE:=10,30}" "${MEDIA_PAIRS:=6}" "${MEDIA_LIFE:=20,45}"
    : "${EXPIRY_SLOTS:=0}" "${REFRESH_S:=8}" "${SAMPLE_S:=10}" "${RELOAD_S:=30}" "${TTL_A:=20}" "${TTL_B:=25}"
    # A hundred-odd fds move by ±10 as peers come and go and revoked relays wait out the grace
    # period: 5 % of them is less than that. Leaks show in the other fds and the final count.
    : "${FD_FLOOR:=16}"
else
    : "${SECS:=3600}" "${ROOMS:=200}" "${LIFE:=20,180}" "${MEDIA_PAIRS:=15}" "${MEDIA_LIFE:=120,600}"
    : "${EXPIRY_SLOTS:=4}" "${REFRESH_S:=30}" "${SAMPLE_S:=60}" "${RELOAD_S:=240}" "${TTL_A:=300}" "${TTL_B:=360}"
    : "${FD_FLOOR:=8}"
fi
: "${GRACE_S:=5}" "${MEDIA_RATE:=50}" "${TURN_SHARE:=0.5}"
: "${HTTPS_PORT:=28443}" "${TURN_PORT:=23478}" "${TURNS_PORT:=25349}" "${ADMIN_PORT:=29478}"
OUT=${OUT:-$ROOT/bench/results/$(date -u +%Y%m%d-%H%M%S)-soak}
SECRET_A=soak-secret-a-0123456789abcdef
SECRET_B=soak-secret-b-0123456789abcdef

mkdir -p "$OUT"
nice cargo build --release -q -p switchboard -p switchboard-bench
BIN=$ROOT/target/release
SERVER_BIN=${SERVER_BIN:-$BIN/switchboard}
{
    echo "date: $(date -u +%FT%TZ)"
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/ {print $2}') GiB"
    echo "kernel: $(uname -r)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "server: $SERVER_BIN"
    echo "secs: $SECS rooms: $ROOMS life: $LIFE media_pairs: $MEDIA_PAIRS media_life: $MEDIA_LIFE expiry_slots: $EXPIRY_SLOTS reload_s: $RELOAD_S sample_s: $SAMPLE_S"
} > "$OUT/README.txt"

# Two configs that differ in what a reload can change: the secret that mints, and the TTL.
config() { # config TTL SECRETS
    sed -e "s|@STATE_DIR@|$OUT/sb-state|" -e "s|@HTTPS_PORT@|$HTTPS_PORT|" \
        -e "s|@TURN_PORT@|$TURN_PORT|g" -e "s|@TURNS_PORT@|$TURNS_PORT|" -e "s|@ADMIN_PORT@|$ADMIN_PORT|" \
        -e "s|@SECRETS@|$2|" -e "s|@TTL@|$1|" -e "s|@GRACE@|$GRACE_S|" bench/configs/soak.toml
}
config "$TTL_A" "\"$SECRET_A\", \"$SECRET_B\"" > "$OUT/config-a.toml"
config "$TTL_B" "\"$SECRET_B\", \"$SECRET_A\"" > "$OUT/config-b.toml"
cp "$OUT/config-a.toml" "$OUT/switchboard.toml"
"$SERVER_BIN" check-config --quiet --config "$OUT/config-b.toml"
"$SERVER_BIN" check-config --quiet --config "$OUT/switchboard.toml"

PID=
stop() {
    if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
    PID=
}
trap stop EXIT INT TERM
rm -rf "$OUT/sb-state"
"$SERVER_BIN" run --config "$OUT/switchboard.toml" >> "$OUT/switchboard.log" 2>&1 &
PID=$!
ready() {
    for port in "$HTTPS_PORT" "$TURN_PORT" "$TURNS_PORT" "$ADMIN_PORT"; do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || return 1
    done
    [ -s "$OUT/sb-state/selfsigned-cert.pem" ]
}
for _ in $(seq 1 400); do
    ready && break
    if ! kill -0 "$PID" 2>/dev/null; then
        echo "error: Switchboard exited at start (see $OUT/switchboard.log)" >&2
        tail -5 "$OUT/switchboard.log" >&2
        exit 1
    fi
    sleep 0.025
done
ready || { echo "error: Switchboard is not ready (see $OUT/switchboard.log)" >&2; exit 1; }
# Let the accept loops of the just-bound listeners start before the idle sample.
sleep 1

echo "soak: $SECS s against PID $PID; results in $OUT" >&2
status=0
"$BIN/soak-load" --https "127.0.0.1:$HTTPS_PORT" --admin "127.0.0.1:$ADMIN_PORT" \
    --ca "$OUT/sb-state/selfsigned-cert.pem" --server-pid "$PID" --secs "$SECS" \
    --rooms "$ROOMS" --life "$LIFE" --turn-share "$TURN_SHARE" \
    --media-pairs "$MEDIA_PAIRS" --media-rate "$MEDIA_RATE" --media-life "$MEDIA_LIFE" \
    --expiry-slots "$EXPIRY_SLOTS" --refresh-secs "$REFRESH_S" --sample-secs "$SAMPLE_S" \
    --reload-secs "$RELOAD_S" --config "$OUT/switchboard.toml" \
    --reload-configs "$OUT/config-a.toml,$OUT/config-b.toml" --server-log "$OUT/switchboard.log" \
    --grace-secs "$GRACE_S" --fd-floor "$FD_FLOOR" --out "$OUT" "${LEAK[@]}" || status=$?
stop

if [ "$status" != 0 ]; then
    echo "soak: FAIL (see $OUT/summary.json)" >&2
    exit 1
fi
echo "soak: PASS ($OUT)" >&2
