#!/usr/bin/env bash
# What sharing rooms through Redis costs: signaling relay latency and CPU per message for
# pairs on one lone instance, on one instance of a cluster, and split across two instances
# of a cluster, at the same fixed rate; and Redis's memory per joined peer.
#
#   bench/cluster.sh            full run (~2 min): 5,000 pairs, 20,000 msg/s, 8 s
#   bench/cluster.sh --smoke    seconds, small N: keeps the script and tools from rotting
#   REPEATS=3 bench/cluster.sh  alternate the three setups three times
#   ONLY=across bench/cluster.sh  one setup only (lone, same or across)
#   ONLY=capacity bench/cluster.sh  three instances, as many connections as the fd limit
#                               allows (CAP_PAIRS pairs per generator, three generators,
#                               each pair split over two instances): connect, join and
#                               negotiation burst, RSS per instance, Redis memory and
#                               commands per peer
#   SWITCHBOARD=/tmp/old/switchboard bench/cluster.sh  another server binary (to alternate
#                               a change's before and after)
#
# Every server (both instances and redis-server) runs pinned to core $SERVER_CORE and the
# generator to $GEN_CORE, so the server core's busy time (/proc/stat) is the whole cost of
# a message, Redis's included. SPREAD=1 pins nothing: the processes share both cores, as
# instances on their own cores or hosts would not share one (no core figure then). Everything is started here, on loopback, and stopped by PID.
# Results: bench/results/<date>/sig-cluster.jsonl and a line per run on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
SERVER_CORE=${SERVER_CORE:-0}
GEN_CORE=${GEN_CORE:-1}
REPEATS=${REPEATS:-1}
ONLY=${ONLY:-}
OUT=${OUT:-$ROOT/bench/results/$(date -u +%Y%m%d-%H%M%S)-cluster}
if [ $SMOKE = 1 ]; then
    PAIRS=50; RATE=500; SECS=1
else
    PAIRS=5000; RATE=${RATE:-20000}; SECS=8
fi
mkdir -p "$OUT"
echo "bench/cluster.sh: servers and Redis on core $SERVER_CORE, generator on core $GEN_CORE (SPREAD=${SPREAD:-0}); results in $OUT" | tee "$OUT/README.txt"
echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)" >> "$OUT/README.txt"

cargo build --release -q -p switchboard -p switchboard-bench
BIN=$ROOT/target/release
SWITCHBOARD=${SWITCHBOARD:-$BIN/switchboard}
GEN=(taskset -c "$GEN_CORE")
SRV=(taskset -c "$SERVER_CORE")
CORE_ARGS=(--server-core "$SERVER_CORE")
if [ "${SPREAD:-0}" = 1 ]; then
    GEN=(); SRV=(); CORE_ARGS=()
fi

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
}
trap cleanup EXIT INT TERM

# wait_tcp PORT: until something accepts on 127.0.0.1:PORT (no sleeps as synchronisation).
wait_tcp() {
    for _ in $(seq 1 400); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.025
    done
    echo "error: nothing listens on 127.0.0.1:$1" >&2
    return 1
}

REDIS_SOCK=$OUT/redis.sock
start_redis() {
    rm -f "$REDIS_SOCK"
    "${SRV[@]}" redis-server --port 0 --save "" --appendonly no --unixsocket "$REDIS_SOCK" \
        --unixsocketperm 700 --dir "$OUT" >> "$OUT/redis.log" 2>&1 &
    PIDS+=("$!")
    for _ in $(seq 1 400); do
        redis-cli -s "$REDIS_SOCK" ping >/dev/null 2>&1 && return 0
        sleep 0.025
    done
    echo "error: redis-server did not start (see $OUT/redis.log)" >&2
    return 1
}

# start_instance NAME HTTPS_PORT CLUSTER(0|1): the bench config, TURN off (signaling only),
# both instances serving instance a's certificate so one --ca fits both.
start_instance() {
    local name=$1 port=$2 cluster=$3 config=$OUT/$1.toml
    {
        echo "[server]"
        echo "state_dir = \"$OUT/$name-state\""
        sed -n '/^\[log\]/,/^\[turn\]/p' bench/configs/switchboard.toml | sed '$d' \
            | sed "s|127.0.0.1:18443|127.0.0.1:$port|; /legacy_ws_listen/d"
        echo "[turn]"
        echo "enabled = false"
        echo "secrets = [\"bench-secret-0123456789abcdef\"]"
        echo "[admin]"
        echo "listen = []"
        if [ "$cluster" = 1 ]; then
            echo "[cluster]"
            echo "redis_url = \"redis+unix://$REDIS_SOCK\""
            echo "instance_id = \"$name\""
        fi
    } > "$config"
    if [ "$name" != a ]; then
        # The [https] section of the copied config gets a's certificate.
        sed -i "s|^listen = \\[\"127.0.0.1:$port\"\\]|listen = [\"127.0.0.1:$port\"]\ncert = \"$OUT/a-state/selfsigned-cert.pem\"\nkey = \"$OUT/a-state/selfsigned-key.pem\"|" "$config"
    fi
    "${SRV[@]}" "$SWITCHBOARD" run --config "$config" >> "$OUT/$name.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_tcp "$port"
    if [ "$cluster" = 1 ]; then
        # Ready once joined to the cluster (the link connects after the listeners).
        for _ in $(seq 1 400); do
            [ "$(curl -sk -o /dev/null -w '%{http_code}' "https://127.0.0.1:$port/readyz")" = 200 ] && break
            sleep 0.025
        done
    fi
    LAST_PID=$pid
}

# redis_used: Redis's used_memory in bytes.
redis_used() { redis-cli -s "$REDIS_SOCK" info memory | awk -F: '/^used_memory:/ {print $2+0}'; }
# redis_calls CMD: how many times Redis ran CMD (eval, publish, ...) since it started.
redis_calls() {
    redis-cli -s "$REDIS_SOCK" info commandstats \
        | awk -F'[:=,]' -v c="cmdstat_$1" '$1 == c {print $3+0; f=1} END {if (!f) print 0}'
}
# rss_kb PID: resident memory of a process.
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# run SETUP ARGS...: sig-load with the native dialect; with Redis, samples its memory.
run() {
    local setup=$1; shift
    local base peak
    base=$([ -S "$REDIS_SOCK" ] && redis_used || echo 0)
    peak=$base
    "${GEN[@]}" "$BIN/sig-load" --label "$setup" --dialect native --pairs $PAIRS --rate $RATE \
        --sources 127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5 \
        --secs $SECS --ca "$OUT/a-state/selfsigned-cert.pem" --server-pid "$A_PID" \
        "${CORE_ARGS[@]}" "$@" >> "$OUT/sig-cluster.jsonl" 2> "$OUT/$setup.err" &
    local gen=$!
    while kill -0 $gen 2>/dev/null; do
        if [ -S "$REDIS_SOCK" ]; then
            local now
            now=$(redis_used)
            [ "$now" -gt "$peak" ] && peak=$now
        fi
        sleep 0.5
    done
    wait $gen
    grep -E "sustained|relay" "$OUT/$setup.err" | tail -2 | sed "s/^/$setup: /"
    if [ -S "$REDIS_SOCK" ]; then
        echo "$setup: Redis used_memory $base -> peak $peak bytes: $(( (peak - base) / (2 * PAIRS) )) bytes per joined peer ($((2 * PAIRS)) peers in $PAIRS rooms)"
        echo "$setup: Redis ran $(redis_calls eval) EVAL (joins and leaves of $((2 * PAIRS)) peers), $(redis_calls publish) PUBLISH, $(redis_calls hgetall) HGETALL, $(redis_calls evalsha) EVALSHA (heartbeats)"
    fi
}

# capacity: three instances, three generators (a-b, b-c, c-a), every pair split over two
# instances; each instance holds 2 x CAP_PAIRS connections, each generator as many.
capacity() {
    local pairs=${CAP_PAIRS:-9400}
    [ $SMOKE = 1 ] && pairs=50
    start_redis
    start_instance a 18443 1; local pa=$LAST_PID
    start_instance b 18444 1; local pb=$LAST_PID
    start_instance c 18445 1; local pc=$LAST_PID
    # d holds no connection: its growth is what mirroring the cluster's rooms costs.
    start_instance d 18446 1; local pd=$LAST_PID
    local base peak rss0 gens=() i=0
    base=$(redis_used); peak=$base
    rss0="$(rss_kb $pa) $(rss_kb $pb) $(rss_kb $pc) $(rss_kb $pd)"
    local -a peak_rss=(0 0 0 0) pids=("$pa" "$pb" "$pc" "$pd")
    for link in "a 18443 18444 127.0.0.2,127.0.0.3 $pa" "b 18444 18445 127.0.0.4,127.0.0.5 $pb" \
                "c 18445 18443 127.0.0.6,127.0.0.7 $pc"; do
        read -r name from to sources pid <<< "$link"
        "${GEN[@]}" "$BIN/sig-load" --label "capacity-$name" --dialect native --pairs "$pairs" \
            --rate 0 --sources "$sources" --room-prefix "$name-" --ca "$OUT/a-state/selfsigned-cert.pem" \
            --server-pid "$pid" --url "wss://127.0.0.1:$from/ws" --peer-url "wss://127.0.0.1:$to/ws" \
            >> "$OUT/sig-capacity.jsonl" 2> "$OUT/capacity-$name.err" &
        gens+=("$!")
    done
    while :; do
        local alive=0
        for g in "${gens[@]}"; do kill -0 "$g" 2>/dev/null && alive=1; done
        local now
        now=$(redis_used); [ "$now" -gt "$peak" ] && peak=$now
        for i in 0 1 2 3; do
            now=$(rss_kb "${pids[$i]}"); [ "$now" -gt "${peak_rss[$i]}" ] && peak_rss[$i]=$now
        done
        [ $alive = 0 ] && break
        sleep 0.5
    done
    local failed=0
    for g in "${gens[@]}"; do wait "$g" || failed=1; done
    for name in a b c; do grep -E "connected|joins|negotiations|Error" "$OUT/capacity-$name.err" | sed "s/^/capacity-$name: /"; done
    local peers=$((6 * pairs))
    echo "capacity: $peers connections ($((2 * pairs)) per instance) in $((3 * pairs)) rooms of two, each across two instances"
    echo "capacity: instance RSS KiB (a b c, and d without connections) before ${rss0}; peak ${peak_rss[*]}"
    echo "capacity: Redis used_memory $base -> peak $peak bytes: $(( (peak - base) / peers )) bytes per joined peer"
    echo "capacity: Redis ran $(redis_calls eval) EVAL (joins and leaves of $peers peers), $(redis_calls publish) PUBLISH, $(redis_calls hgetall) HGETALL, $(redis_calls evalsha) EVALSHA (heartbeats)"
    echo "capacity: Redis µs per call (its own time): $(redis-cli -s "$REDIS_SOCK" info commandstats | grep -E '^cmdstat_(eval|publish|evalsha|hgetall):' | sed -E 's/^cmdstat_([a-z]+):.*usec_per_call=([0-9.]+).*/\1 \2/' | paste -sd, -); used_cpu $(redis-cli -s "$REDIS_SOCK" info cpu | grep -E '^used_cpu_(sys|user):' | tr -d '\r' | paste -sd' ' -)"
    cleanup
    return $failed
}

if [ "$ONLY" = capacity ]; then
    capacity
    echo "results: $OUT/sig-capacity.jsonl"
    exit 0
fi
for r in $(seq 1 "$REPEATS"); do
    echo "== round $r" >&2
    if [ -z "$ONLY" ] || [ "$ONLY" = lone ]; then
        # A lone instance, no cluster.
        start_instance a 18443 0; A_PID=$LAST_PID
        run lone --url wss://127.0.0.1:18443/ws
        cleanup
    fi
    if [ -z "$ONLY" ] || [ "$ONLY" = same ]; then
        # Two instances and Redis; every pair on instance a.
        start_redis
        start_instance a 18443 1; A_PID=$LAST_PID
        start_instance b 18444 1
        run same-instance --url wss://127.0.0.1:18443/ws
        cleanup
    fi
    if [ -z "$ONLY" ] || [ "$ONLY" = across ]; then
        # Two instances and Redis; each pair split over a and b.
        start_redis
        start_instance a 18443 1; A_PID=$LAST_PID
        start_instance b 18444 1
        run across-instances --url wss://127.0.0.1:18443/ws --peer-url wss://127.0.0.1:18444/ws
        cleanup
    fi
done
echo "results: $OUT/sig-cluster.jsonl"
