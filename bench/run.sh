#!/usr/bin/env bash
# Side-by-side benchmarks: Switchboard against coturn (TURN) and the tutorials' Node
# servers (signaling), plus reference ceilings (udp-forward, ws-echo).
#
#   bench/run.sh            full run (~15 min): 8 s steps, 10k connections
#   bench/run.sh --smoke    seconds, small N: keeps the script and tools from rotting
#   REPEATS=3 bench/run.sh  alternate A/B three times (the machine is noisy)
#   ONLY=turn|sig           only the TURN or only the signaling scenarios
#   FIXED=only ONLY=turn    only the fixed-rate TURN scenarios (CPU per packet; ~6 min)
#
# Every server runs pinned to core $SERVER_CORE and every generator to $GEN_CORE
# (taskset), started by this script on loopback and stopped by PID when it ends.
# Results: bench/results/<date>/*.jsonl, report.md, turn.svg and turn-cpu.svg (bench-report).
# Needs: coturn (its turnserver binary; the Debian package does not start it), node/npm.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
SERVER_CORE=${SERVER_CORE:-0}
GEN_CORE=${GEN_CORE:-1}
REPEATS=${REPEATS:-1}
OUT=${OUT:-$ROOT/bench/results/$(date -u +%Y%m%d-%H%M%S)}
SECRET=bench-secret-0123456789abcdef
SOURCES=127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5

if [ $SMOKE = 1 ]; then
    STEP=1; DRAIN=0.3; ALLOCS=20; SETUP_ALLOCS=200
    RELAY_RATES=2000,5000; ECHO_RATES=2000,5000; TCP_RATES=2000
    PAIRS=50; BIG_PAIRS=100; SIG_RATE=500; SIG_SECS=1
    FIXED_RATES=2000; FIXED_ALLOCS="20 100"
else
    STEP=8; DRAIN=1; ALLOCS=100; SETUP_ALLOCS=5000
    RELAY_RATES=40000,60000,70000,80000,90000,100000,120000,140000,160000,180000,200000,220000
    ECHO_RATES=40000,60000,80000,100000,120000,140000,160000,180000,200000
    TCP_RATES=20000,40000,60000,80000,100000,120000
    PAIRS=5000; BIG_PAIRS=9500; SIG_RATE=20000; SIG_SECS=8
    FIXED_RATES=10000,20000,40000; FIXED_ALLOCS="100 1000"
fi
# FIXED=0 leaves out the fixed-rate scenarios (CPU per packet at moderate load);
# FIXED=only runs nothing else of TURN.
FIXED=${FIXED:-1}

mkdir -p "$OUT"
NPROC=$(nproc)
if [ "$NPROC" -lt 2 ]; then
    echo "warning: $NPROC core(s): server and generator share a core" >&2
    GEN_CORE=$SERVER_CORE
fi
echo "bench: server pinned to core $SERVER_CORE, generators to core $GEN_CORE (taskset); results in $OUT" | tee "$OUT/README.txt"
{
    echo "date: $(date -u +%FT%TZ)"
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/ {print $2}') GiB"
    echo "kernel: $(uname -r)"
    echo "coturn: $(turnserver --version 2>/dev/null | head -1 || echo missing)"
    echo "node: $(node --version 2>/dev/null || echo missing)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
} >> "$OUT/README.txt"

cargo build --release -q -p switchboard -p switchboard-bench
npm ci --prefix bench/baselines --no-audit --no-fund --silent
BIN=$ROOT/target/release
GEN=(taskset -c "$GEN_CORE")
SRV=(taskset -c "$SERVER_CORE")

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
}
trap cleanup EXIT INT TERM

# wait_tcp PORT: until something accepts on 127.0.0.1:PORT (bash's /dev/tcp; no sleeps as sync).
wait_tcp() {
    for _ in $(seq 1 400); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.025
    done
    echo "error: nothing listens on 127.0.0.1:$1" >&2
    return 1
}

SERVER_PID=
start_switchboard() {
    rm -rf "$OUT/sb-state"
    sed "s|^state_dir = .*|state_dir = \"$OUT/sb-state\"|" bench/configs/switchboard.toml > "$OUT/switchboard.toml"
    "${SRV[@]}" "$BIN/switchboard" run --config "$OUT/switchboard.toml" >> "$OUT/switchboard.log" 2>&1 &
    SERVER_PID=$!; PIDS+=("$SERVER_PID")
    wait_tcp 18443; wait_tcp 3478; wait_tcp 5349
}
start_coturn() { # start_coturn [tls]: TURN over TLS on 5350 too, with Switchboard's certificate
    local tls=(--no-tls)
    [ "${1:-}" = tls ] && tls=(--tls-listening-port=5350 --cert="$OUT/tls/cert.pem" --pkey="$OUT/tls/key.pem")
    # One relay thread, loopback only, REST secret; its own process, never the daemon.
    "${SRV[@]}" turnserver -n --listening-ip=127.0.0.1 --listening-port=3479 --relay-ip=127.0.0.1 \
        --use-auth-secret --static-auth-secret=$SECRET --realm=bench --allow-loopback-peers \
        "${tls[@]}" --no-dtls --no-cli --relay-threads=1 --min-port=20000 --max-port=60000 \
        --total-quota=0 --user-quota=0 --log-file="$OUT/coturn.log" --no-stdout-log >/dev/null 2>&1 &
    SERVER_PID=$!; PIDS+=("$SERVER_PID")
    wait_tcp 3479
    [ "${1:-}" = tls ] && wait_tcp 5350
    return 0
}
start_forwarder() {
    "${SRV[@]}" "$BIN/udp-forward" --listen 127.0.0.1:3480 2>>"$OUT/forwarder.log" &
    SERVER_PID=$!; PIDS+=("$SERVER_PID")
}
start_node() { # start_node SCRIPT PORT [tls]
    local env=(PORT="$2")
    [ "${3:-}" = tls ] && env+=(CERT="$OUT/sb-state/selfsigned-cert.pem" KEY="$OUT/sb-state/selfsigned-key.pem")
    env "${env[@]}" "${SRV[@]}" node "bench/baselines/$1" >>"$OUT/node.log" 2>&1 &
    SERVER_PID=$!; PIDS+=("$SERVER_PID")
    wait_tcp "$2"
}
start_echo() { # start_echo [tls]
    local tls=()
    [ "${1:-}" = tls ] && tls=(--cert "$OUT/sb-state/selfsigned-cert.pem" --key "$OUT/sb-state/selfsigned-key.pem")
    "${SRV[@]}" "$BIN/ws-echo" --listen 127.0.0.1:18090 "${tls[@]}" 2>>"$OUT/echo.log" &
    SERVER_PID=$!; PIDS+=("$SERVER_PID")
    wait_tcp 18090
}

# A scenario that fails is recorded and the run goes on; the script fails at the end.
FAILED=()
failed() { # failed LABEL FILE
    echo "bench: $2 against $1 FAILED (see the lines above)" >&2
    FAILED+=("$2 ($1)")
}
turn_load() { # turn_load FILE LABEL PORT ARGS...
    local file=$1 label=$2 port=$3; shift 3
    echo "== $label: turn-load $*" >&2
    "${GEN[@]}" "$BIN/turn-load" --server "127.0.0.1:$port" --secret $SECRET --label "$label" \
        --server-pid "$SERVER_PID" --server-core "$SERVER_CORE" --step-secs $STEP --drain-secs $DRAIN \
        "$@" >> "$OUT/$file.jsonl" || failed "$label" "$file"
}
sig_load() { # sig_load FILE LABEL ARGS...
    local file=$1 label=$2; shift 2
    echo "== $label: sig-load $*" >&2
    "${GEN[@]}" "$BIN/sig-load" --label "$label" --server-pid "$SERVER_PID" --server-core "$SERVER_CORE" \
        --sources $SOURCES --ca "$OUT/sb-state/selfsigned-cert.pem" "$@" >> "$OUT/$file.jsonl" \
        || failed "$label" "$file"
}

# The certificate the wss:// baselines share is Switchboard's self-signed one; coturn's
# TURN over TLS uses it too (a copy: every start_switchboard makes a new one).
start_switchboard; cleanup
mkdir -p "$OUT/tls"
cp "$OUT/sb-state/selfsigned-cert.pem" "$OUT/tls/cert.pem"
cp "$OUT/sb-state/selfsigned-key.pem" "$OUT/tls/key.pem"

ONLY=${ONLY:-all}   # all, turn or sig
for rep in $(seq 1 "$REPEATS"); do
    # Alternate which server goes first, so that drift in the machine's load hits both.
    if [ $((rep % 2)) = 1 ]; then order="switchboard coturn"; else order="coturn switchboard"; fi
    [ "$ONLY" = sig ] && order=
    for server in $order; do
        # Fixed offered loads, far below saturation: what a packet costs the server's core
        # (softirq included) when nothing batches by itself (turn-fixed-*).
        if [ "$FIXED" != 0 ]; then
            for n in $FIXED_ALLOCS; do
                for mode in relay echo; do
                    if [ $server = switchboard ]; then start_switchboard; port=3478; else start_coturn; port=3479; fi
                    turn_load "turn-fixed-$mode-$n" $server $port --mode $mode --allocations "$n" --rates "$FIXED_RATES" --sources $SOURCES
                    cleanup
                done
            done
            if [ $server = switchboard ]; then start_switchboard; port=3478; else start_coturn; port=3479; fi
            turn_load "turn-fixed-relay-tcp-$ALLOCS" $server $port --tcp --mode relay --allocations $ALLOCS --rates 20000
            cleanup
            if [ $server = switchboard ]; then start_switchboard; port=5349; else start_coturn tls; port=5350; fi
            turn_load "turn-fixed-relay-tls-$ALLOCS" $server $port --tls --mode relay --allocations $ALLOCS --rates 20000
            cleanup
            [ "$FIXED" = only ] && continue
        fi
        for mode in relay echo; do
            rates=$RELAY_RATES; [ $mode = echo ] && rates=$ECHO_RATES
            if [ $server = switchboard ]; then start_switchboard; port=3478; else start_coturn; port=3479; fi
            turn_load "turn-$mode" $server $port --mode $mode --allocations $ALLOCS --rates "$rates"
            cleanup
        done
        # TURN over TCP to the server (relays stay UDP), relay to relay.
        if [ $server = switchboard ]; then start_switchboard; port=3478; else start_coturn; port=3479; fi
        turn_load turn-relay-tcp $server $port --tcp --mode relay --allocations $ALLOCS --rates "$TCP_RATES"
        cleanup
        # TURN over TLS (a record per frame, as coturn's own client sends), relay to relay.
        if [ $server = switchboard ]; then start_switchboard; port=5349; else start_coturn tls; port=5350; fi
        turn_load turn-relay-tls $server $port --tls --mode relay --allocations $ALLOCS --rates "$TCP_RATES"
        cleanup
        if [ $server = switchboard ]; then start_switchboard; port=3478; else start_coturn; port=3479; fi
        turn_load turn-setup $server $port --setup-only --allocations $SETUP_ALLOCS --sources $SOURCES
        cleanup
    done
    if [ "$ONLY" != sig ] && [ "$FIXED" != only ]; then
        start_forwarder
        turn_load turn-relay forwarder 3480 --forwarder --allocations $ALLOCS --rates "$RELAY_RATES"
        cleanup
    fi
    [ "$ONLY" = turn ] && continue

    # Signaling, same wire protocol on both sides of each comparison.
    common=(--pairs $PAIRS --rate $SIG_RATE --secs $SIG_SECS)
    start_switchboard; sig_load sig-plain-ws switchboard --url ws://127.0.0.1:18080/legacy --dialect plain "${common[@]}"; cleanup
    start_node ws-server.mjs 9090; sig_load sig-plain-ws node-ws --url ws://127.0.0.1:9090/ --dialect plain "${common[@]}"; cleanup
    start_echo; sig_load sig-plain-ws ws-echo --url ws://127.0.0.1:18090/ --dialect echo "${common[@]}"; cleanup
    start_switchboard; sig_load sig-wss switchboard --url wss://127.0.0.1:18443/ws --dialect native "${common[@]}"; cleanup
    start_switchboard; sig_load sig-wss switchboard --url wss://127.0.0.1:18443/legacy --dialect plain "${common[@]}"; cleanup
    start_node ws-server.mjs 9443 tls; sig_load sig-wss node-ws --url wss://127.0.0.1:9443/ --dialect plain "${common[@]}"; cleanup
    start_echo tls; sig_load sig-wss ws-echo --url wss://127.0.0.1:18090/ --dialect echo "${common[@]}"; cleanup
    # socket.io: Switchboard serves it on its HTTPS port only, so both over wss://.
    start_switchboard; sig_load sig-socketio switchboard --url "wss://127.0.0.1:18443/socket.io/?EIO=4&transport=websocket" --dialect socketio "${common[@]}"; cleanup
    start_node socketio-server.mjs 8443 tls; sig_load sig-socketio node-socketio --url "wss://127.0.0.1:8443/socket.io/?EIO=4&transport=websocket" --dialect socketio "${common[@]}"; cleanup
    # The most concurrent WSS connections one generator process can hold (20k fd limit).
    start_switchboard; sig_load sig-wss-max switchboard --url wss://127.0.0.1:18443/ws --dialect native --pairs $BIG_PAIRS --rate 0; cleanup
done

check=()
[ $SMOKE = 1 ] && check=(--check)
"$BIN/bench-report" "${check[@]}" "$OUT" > /dev/null
echo "bench: report in $OUT/report.md, plots in $OUT/turn.svg and $OUT/turn-cpu.svg" >&2
if [ ${#FAILED[@]} -gt 0 ]; then
    printf 'bench: failed: %s\n' "${FAILED[@]}" | tee "$OUT/FAILED.txt" >&2
    exit 1
fi
