#!/usr/bin/env bash
# Switchboard under attack: what one hostile client costs the server, and whether everyone
# else is still served (bench/RESULTS.md, "Under attack"). Uses bench/configs/switchboard.toml.
#
#   bench/attack.sh           the figures in RESULTS.md (about five minutes)
#   bench/attack.sh --smoke   small numbers, seconds: keeps the scenarios from rotting
#   SERVER_BIN=path/to/switchboard bench/attack.sh   another build (say, an older commit)
#   ONLY=turn|sig bench/attack.sh                    one half
#   NETNS=0 bench/attack.sh                          no network namespace (see below)
#
# Scenarios (turn-attack): a flood of unauthenticated Allocates from many source ports,
# 10,000 TCP connections that never allocate (silent, then half of them with half a frame),
# and a TCP client that never reads beside a UDP client relaying at 100 packets/s.
# Scenarios (sig-attack, issue 16's items 1-6, one unauthenticated client each, beside a
# legitimate pair that joins a fresh room every 200 ms and relays a signal every 50 ms):
# oversized socket.io messages, the HTTPS port held open (silent, HTTP/2 preface only, idle
# HTTP/2), socket.io connect-then-close polling, a ping flood, many IPv6 addresses of one
# /64, a member that never reads, and fragmented messages never finished.
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
NS=
TOOL=
cleanup() {
    if [ -n "$TOOL" ]; then kill "$TOOL" 2>/dev/null || true; wait "$TOOL" 2>/dev/null || true; fi
    TOOL=
    stop
    if [ -n "$NS" ]; then ip netns del "$NS" 2>/dev/null || true; fi
    NS=
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
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

if [ "${ONLY:-turn}" = turn ]; then
    start; attack flood "${FLOOD[@]}"
    start; attack stalled "${STALLED[@]}"
    start; attack stalled --half-frames "${STALLED[@]}"
    start; attack slow-reader "${SLOW[@]}"
    stop
fi

# Signaling and HTTPS (sig-attack). Each scenario gets a fresh server with
# bench/configs/switchboard.toml, except that signaling.max_connections_per_ip is the
# shipped 50 (the bench config raises it so that sig-load's 10,000 sockets fit in four
# addresses; here it is one of the limits under attack). The message rate stays raised
# (100,000/s): the legitimate pair needs more than the shipped 20/s, and the floods then
# meet the server's other defences rather than only the rate limit. --smoke also shortens
# the timeouts (https.request_timeout_s, https.idle_timeout_s, signaling.idle_timeout_s)
# so that the closes they cause happen within its seconds.
#
# Server and generator run in a network namespace made here, when `ip netns` works (root):
# the attacker can then hold any address of the /64 2001:db8:1::/64 (a local route and
# ip_nonlocal_bind), and nothing clashes with other servers on this host's loopback.
# Without one, on this host's loopback, and the /64 scenario uses four IPv4 addresses
# (127.0.0.17-20) instead: it then shows the cap per address, not per /64.
SIG_FAILED=()
if [ "${ONLY:-sig}" = sig ]; then
    if [ $SMOKE = 1 ]; then
        SIG_LIMITS=(https.request_timeout_s=2 https.idle_timeout_s=3
            signaling.ping_interval_s=1 signaling.idle_timeout_s=2)
        SIG_SETTLE=(--settle-secs 0.5)
        OVERSIZE=(--attempts 5 --rate 10)
        HELD=(--connections 300 --rate 200 --secs 4)
        H2IDLE=(--connections 300 --rate 200 --secs 5)
        LEAK=(--cycles 100 --rate 200)
        LEAK_FLAT_OUT=(--cycles 200 --rate 0)
        PINGS=(--secs 2)
        NETWORK=(--secs 2)
        V6_ADDRESSES=100
        STALL=(--secs 2)
        HALF=(--clients 10 --secs 4 --expect-close-s 2.5)
    else
        SIG_LIMITS=()
        SIG_SETTLE=(--settle-secs 2)
        OVERSIZE=(--attempts 100 --rate 10)
        HELD=(--connections 1000 --rate 200 --secs 20)
        H2IDLE=(--connections 1000 --rate 200 --secs 70)
        LEAK=(--cycles 2000 --rate 200)
        LEAK_FLAT_OUT=(--cycles 10000 --rate 0)
        PINGS=(--secs 15)
        NETWORK=(--secs 10)
        V6_ADDRESSES=1000
        STALL=(--secs 15)
        HALF=(--clients 40 --secs 50 --expect-close-s 46)
    fi

    SIG_LISTEN='["127.0.0.1:18443"]'
    ATTACK_V6=()
    SOURCES=(--network 127.0.0.16/29 --addresses 4 --per-address 100 --expect-cap 200)
    if [ "${NETNS:-1}" = 1 ] && [ "$(id -u)" = 0 ] && ip netns add "sb-attack-$$" 2>/dev/null; then
        NS=sb-attack-$$
        ip -n "$NS" link set lo up
        if ip -n "$NS" -6 addr add 2001:db8:ffff::1/64 dev lo nodad 2>/dev/null \
            && ip -n "$NS" -6 route add local 2001:db8:1::/64 dev lo 2>/dev/null \
            && ip netns exec "$NS" sysctl -qw net.ipv6.ip_nonlocal_bind=1 2>/dev/null; then
            SIG_LISTEN='["127.0.0.1:18443", "[2001:db8:ffff::1]:18443"]'
            ATTACK_V6=(--attack-server '[2001:db8:ffff::1]:18443')
            SOURCES=(--network 2001:db8:1::/64 --addresses "$V6_ADDRESSES" --per-address 2
                --expect-cap 50)
        else
            echo "bench: no IPv6 in the namespace: the /64 scenario uses IPv4 addresses" >&2
        fi
    else
        echo "bench: no network namespace (needs root and ip netns): the signaling scenarios" \
            "run on this host's loopback, the /64 one from IPv4 addresses" >&2
    fi
    # Runs a command in the namespace, if any; `spawn` replaces the shell with it, so that
    # `spawn ... &` leaves the command's own PID in $!.
    in_ns() { if [ -n "$NS" ]; then ip netns exec "$NS" "$@"; else "$@"; fi; }
    spawn() { if [ -n "$NS" ]; then exec ip netns exec "$NS" "$@"; fi; exec "$@"; }
    # toml_set FILE SECTION KEY VALUE: KEY = VALUE in [SECTION], replaced or added.
    toml_set() {
        awk -v s="[$2]" -v k="$3" -v v="$4" '
            function put() { if (!done) { print k " = " v; done = 1 } }
            /^\[/ { if (inside) put(); inside = ($0 == s); if (inside) seen = 1; print; next }
            inside && $1 == k && $2 == "=" { put(); next }
            { print }
            END { if (inside) put(); if (!seen) { print ""; print s; print k " = " v } }
        ' "$1" > "$1.tmp" && mv "$1.tmp" "$1"
    }
    sig_start() { # sig_start [SECTION.KEY=VALUE...]
        stop
        rm -rf "$OUT/sig-state"
        local conf=$OUT/sig.toml kv key
        cp bench/configs/switchboard.toml "$conf"
        toml_set "$conf" server state_dir "\"$OUT/sig-state\""
        toml_set "$conf" https listen "$SIG_LISTEN"
        toml_set "$conf" admin listen '["127.0.0.1:9478"]'
        toml_set "$conf" signaling max_connections_per_ip 50
        for kv in ${SIG_LIMITS[@]+"${SIG_LIMITS[@]}"} "$@"; do
            key=${kv%%=*}
            toml_set "$conf" "${key%%.*}" "${key#*.}" "${kv#*=}"
        done
        spawn taskset -c "$SERVER_CORE" "$SERVER_BIN" run --config "$conf" \
            >> "$OUT/switchboard-sig.log" 2>&1 &
        PID=$!
        for _ in $(seq 1 400); do
            kill -0 "$PID" 2>/dev/null || break
            if [ -s "$OUT/sig-state/selfsigned-cert.pem" ] \
                && in_ns bash -c 'exec 3<>/dev/tcp/127.0.0.1/18443' 2>/dev/null; then
                return 0
            fi
            sleep 0.025
        done
        echo "error: Switchboard did not start (see $OUT/switchboard-sig.log)" >&2
        exit 1
    }
    sig_attack() { # sig_attack ARGS...
        echo "== sig-attack $*" >&2
        # In the background, so that a signal is handled at once (see cleanup).
        spawn taskset -c "$GEN_CORE" "$BIN/sig-attack" --server 127.0.0.1:18443 \
            --ca "$OUT/sig-state/selfsigned-cert.pem" --server-pid "$PID" \
            --label switchboard "${SIG_SETTLE[@]}" "$@" >> "$OUT/attack.jsonl" &
        TOOL=$!
        wait "$TOOL" || SIG_FAILED+=("$*")
        TOOL=
    }

    sig_start; sig_attack sio-oversize "${OVERSIZE[@]}"
    sig_start; sig_attack https-held --mode silent --expect-cap 200 "${HELD[@]}"
    sig_start; sig_attack https-held --mode preface --expect-cap 200 "${HELD[@]}"
    sig_start; sig_attack https-held --mode h2-idle --expect-cap 200 "${H2IDLE[@]}"
    sig_start; sig_attack sio-slot-leak "${LEAK[@]}"
    sig_start; sig_attack sio-slot-leak "${LEAK_FLAT_OUT[@]}"
    sig_start; sig_attack ping-flood "${PINGS[@]}"
    sig_start; sig_attack ${ATTACK_V6[@]+"${ATTACK_V6[@]}"} source-network "${SOURCES[@]}" \
        "${NETWORK[@]}"
    sig_start; sig_attack slow-reader "${STALL[@]}"
    sig_start; sig_attack half-message "${HALF[@]}"
    cleanup
fi
echo "bench: results in $OUT/attack.jsonl" >&2
if [ ${#SIG_FAILED[@]} -gt 0 ]; then
    echo "error: failed: ${SIG_FAILED[*]}" >&2
    exit 1
fi
