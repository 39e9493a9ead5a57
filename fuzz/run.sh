#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS_PER_TARGET seconds (default 45), one
# after the other, on stable Rust: libFuzzer through cargo-fuzz, with no sanitizer (none is
# stable; the code fuzzed is safe Rust) and with debug assertions and overflow checks on.
# Exits non-zero when any target crashes (a panic, an assertion of the harness, a timeout,
# running out of memory); the input is in fuzz/artifacts/<target>/.
#
#   fuzz/run.sh [SECONDS_PER_TARGET]       TARGETS="ws_frame stun_auth" fuzz/run.sh 300
#
# Each target first runs the reproducers of crashes found before (fuzz/regressions/<target>/),
# then fuzzes from its seeds (fuzz/corpus/<target>/, committed) and from the inputs earlier
# runs on this machine found (fuzz/work/<target>/, not committed, where new ones are written).
# A reproducer runs alone with `fuzz/target/<host>/release/<target> FILE`;
# SWITCHBOARD_FUZZ_TRACE=1 prints what the TURN core decides for each message.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-45}
cargo_fuzz_version=0.13.2
# What the builds and runs may take of a machine someone else works on too.
nice=(nice -n 10)
# --sanitizer none: no nightly flag (-Zsanitizer) is needed. -a: debug assertions.
build_flags=(--sanitizer none -a)

if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
    echo "error: SECONDS_PER_TARGET must be a positive number of seconds, not '$seconds'" >&2
    exit 2
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "+ cargo install --locked cargo-fuzz --version $cargo_fuzz_version"
    "${nice[@]}" cargo install --locked cargo-fuzz --version "$cargo_fuzz_version"
fi
# libfuzzer-sys compiles libFuzzer, which is C++.
if ! command -v c++ >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "+ apt-get install g++ (libFuzzer is C++)"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends g++ >/dev/null
    else
        echo "error: no C++ compiler (c++); libFuzzer needs one: install g++" >&2
        exit 1
    fi
fi

# The fuzz crate has its own Cargo.lock: the crates it shares with the server must be the
# versions the server is built with, or the parsers fuzzed are not the ones shipped.
lock_pairs() { awk '/^name = /{n=$3} /^version = /{print n, $3}' "$1" | tr -d '"' | LC_ALL=C sort -u; }
stale=$(LC_ALL=C join -o 1.1,1.2,2.2 <(lock_pairs Cargo.lock) <(lock_pairs ../Cargo.lock) |
    awk '{ k = $1 " " $2; if ($2 == $3) same[k] = 1; else other[k] = other[k] " " $3 }
         END { for (k in other) if (!(k in same)) print k " (server:" other[k] ")" }')
if [ -n "$stale" ]; then
    echo "error: fuzz/Cargo.lock has other versions than Cargo.lock of crates the server uses:" >&2
    sed 's/^/  /' <<<"$stale" >&2
    echo "  fix: cd fuzz && cargo update -p CRATE@OLD --precise NEW, for each" >&2
    exit 1
fi

# Every target of fuzz/Cargo.toml, unless TARGETS names some.
all=$(cargo fuzz list)
targets=${TARGETS:-$all}
if [ -z "${targets//[[:space:]]/}" ]; then
    echo "error: no fuzz targets to run" >&2
    exit 2
fi
for t in $targets; do
    if ! grep -qx "$t" <<<"$all"; then
        echo "error: no fuzz target '$t' (there are: $(tr '\n' ' ' <<<"$all"))" >&2
        exit 2
    fi
done

start=$(date +%s)
echo "+ cargo fuzz build ${build_flags[*]} ($(cargo fuzz --version))"
"${nice[@]}" cargo fuzz build "${build_flags[@]}"
built=$(date +%s)
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
bin="$target_dir/$(rustc -vV | sed -n 's/^host: //p')/release"

mkdir -p work
failed=()
summary=()
for t in $targets; do
    log="work/$t.log"
    mkdir -p "work/$t" "artifacts/$t"
    if [ ! -x "$bin/$t" ]; then
        echo "error: $bin/$t was not built" >&2
        exit 1
    fi
    # The reproducers first, each once: a crash fixed before that comes back is named as such.
    if [ -d "regressions/$t" ] && [ -n "$(ls -A "regressions/$t")" ]; then
        echo "+ $t: regressions/$t/"
        if ! "${nice[@]}" "$bin/$t" "regressions/$t"/* >"$log" 2>&1; then
            failed+=("$t")
            echo "  $t REGRESSION: a reproducer in fuzz/regressions/$t/ crashes again:"
            grep -E "^Running:|panicked at" "$log" | tail -n 2 | sed 's/^/    /'
            summary+=("$(printf '%-14s REGRESSION  (log fuzz/%s)' "$t" "$log")")
            continue
        fi
    fi
    echo "+ $t: ${seconds}s"
    # The binary built above, as `cargo fuzz run` starts it but without building again (a
    # source edited meanwhile would be rebuilt into the run's time). One process, one job:
    # libFuzzer's -jobs/-workers would fork more and log to files. New inputs go to the
    # first folder, work/<target>.
    set +e
    "${nice[@]}" "$bin/$t" -artifact_prefix="artifacts/$t/" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        "work/$t" "corpus/$t" >"$log" 2>&1
    status=$?
    set -e
    # The last status line (`#N DONE cov: C ft: F corp: …`) and the final statistics.
    last=$(grep -E '^#[0-9]+' "$log" | tail -n1 || true)
    cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
    ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
    corp=$(sed -nE 's/.* corp: ([0-9]+)\/.*/\1/p' <<<"$last")
    execs=$(sed -nE 's/^stat::number_of_executed_units: ([0-9]+)/\1/p' "$log" | tail -n1)
    rate=$(sed -nE 's/^stat::average_exec_per_sec: +([0-9]+)/\1/p' "$log" | tail -n1)
    if [ "$status" -ne 0 ]; then
        failed+=("$t")
        echo "  $t CRASHED (exit $status):"
        grep -E "panicked at|^SUMMARY|Test unit written to|ERROR: libFuzzer" "$log" | head -n 8 | sed 's/^/    /'
        grep -A3 "panicked at" "$log" | sed -n 2,3p | sed 's/^/    /'
        summary+=("$(printf '%-14s CRASH  execs %10s  cov %6s  ft %6s  (log fuzz/%s)' "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}" "$log")")
    else
        summary+=("$(printf '%-14s ok     execs %10s  %7s/s  cov %6s  ft %6s  corpus %5s' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}")")
    fi
done
end=$(date +%s)

echo
echo "fuzz: build $((built - start))s, runs $((end - built))s, ${seconds}s per target"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -ne 0 ]; then
    echo "fuzz: crashes in ${failed[*]}; inputs in fuzz/artifacts/<target>/ (see README.md, Fuzzing)" >&2
    exit 1
fi
