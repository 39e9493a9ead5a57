#!/usr/bin/env bash
# Builds the Debian package and checks it the way an operator would meet it:
# lintian (no errors), `systemd-analyze verify` on the unit, then installs it,
# starts the installed binary with the installed config as the service user with
# only CAP_NET_BIND_SERVICE (as the unit does), checks /healthz on the HTTPS port
# and /metrics on the admin port, stops it, and purges the package.
#
# Needs root and Debian (dpkg, apt); run by .ci/run. Installs cargo-deb if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "error: packaging/check.sh installs a package and needs root" >&2
    exit 1
fi
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --version 3.8.0

cargo deb
deb=$(ls -t target/debian/switchboard_*.deb | head -1)
echo "+ lintian $deb"
lintian --fail-on error "$deb"

apt-get install -y --allow-downgrades "./$deb"
echo "+ systemd-analyze verify"
systemd-analyze verify /usr/lib/systemd/system/switchboard.service

test "$(stat -c '%U:%G %a' /etc/switchboard/config.toml)" = "root:switchboard 640"
test "$(stat -c '%U %a' /var/lib/switchboard)" = "switchboard 750"

log=$(mktemp)
pid=
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    apt-get purge -y switchboard >/dev/null || true
    rm -f "$log"
}
trap cleanup EXIT

# What systemd would do: the service user, the bind capability and nothing else.
setpriv --reuid switchboard --regid switchboard --init-groups \
    --inh-caps +net_bind_service --ambient-caps +net_bind_service \
    /usr/bin/switchboard --config /etc/switchboard/config.toml run >"$log" 2>&1 &
pid=$!

ok=
for _ in $(seq 1 100); do
    if curl -fsSk --max-time 2 https://127.0.0.1:443/healthz >/dev/null 2>&1; then ok=1; break; fi
    if ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.2
done
if [ -z "$ok" ]; then
    echo "error: the installed switchboard did not answer https://127.0.0.1/healthz" >&2
    cat "$log" >&2
    exit 1
fi
echo "+ /healthz answered on 443 (as user switchboard)"
# Read the whole body first: `curl | grep -q` fails under pipefail when grep stops reading early.
metrics=$(curl -fsS --max-time 5 http://127.0.0.1:9478/metrics)
grep -q '^switchboard_signaling_open_connections ' <<<"$metrics"
echo "+ /metrics answered on the admin port"
test -s /var/lib/switchboard/turn-secret
test "$(stat -c '%U %a' /var/lib/switchboard/turn-secret)" = "switchboard 600"
kill -TERM "$pid"
wait "$pid"
pid=
echo "package OK: $deb"
