#!/usr/bin/env bash
# The dashboard's browser test: starts `devicecloud up` (a server plus the simulated device `demo`)
# on free loopback ports with a fresh data directory, then drives Debian's chromium through
# playwright-core (tests/browser/test.mjs): log in, toggle the LED, see the device confirm it,
# check the simulated GPIO line. Screenshots and the server log go to artifacts/browser/.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
ARTIFACTS=$ROOT/artifacts/browser
# DEVICECLOUD_BIN: test another build (e.g. target/release/devicecloud) instead of building the debug one.
BIN=${DEVICECLOUD_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/devicecloud}

die() { echo "browser test: $*" >&2; exit 1; }

CHROMIUM=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
[ -n "$CHROMIUM" ] && [ -x "$CHROMIUM" ] || die "chromium is not installed: apt-get install chromium (the test never downloads a browser)"
command -v node >/dev/null || die "node is not installed: apt-get install nodejs npm"
command -v npm >/dev/null || die "npm is not installed: apt-get install npm"

if [ ! -f tests/browser/node_modules/playwright-core/package.json ]; then
    echo "browser test: installing playwright-core (npm ci; it downloads no browser)"
    (cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error) \
        || die "npm ci failed in tests/browser"
fi

if [ -z "${DEVICECLOUD_BIN:-}" ]; then
    cargo build --locked -q -p devicecloud || die "cargo build -p devicecloud failed"
fi
[ -x "$BIN" ] || die "$BIN is not an executable"

rm -rf "$ARTIFACTS"
mkdir -p "$ARTIFACTS"
DATA=$(mktemp -d "${TMPDIR:-/tmp}/devicecloud-browser.XXXXXX")
LOG=$ARTIFACTS/server.log
SERVER_PID=

cleanup() {
    local rc=$?
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        # Give it a moment to shut down cleanly, then make sure.
        for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$DATA"
    exit "$rc"
}
trap cleanup EXIT INT TERM

# A user app, installed as examples/README.md says, so the test covers /apps and the SDK too.
mkdir -p "$DATA/apps"
cp -r examples/hello-led "$DATA/apps/"

# Free loopback ports, chosen by the kernel (there is a tiny window until the server binds them).
read -r WEB_PORT MQTT_PORT < <(node -e '
  const net = require("net");
  const a = net.createServer(), b = net.createServer();
  a.listen(0, "127.0.0.1", () => b.listen(0, "127.0.0.1", () => {
    console.log(a.address().port, b.address().port);
    a.close();
    b.close();
  }));')

# `--listen` replaces the configured listeners (like `devicecloud server`): the web port and the
# MQTT port the simulated device connects to, both on loopback and off the defaults 8443/8883.
UP_ARGS=(up --data "$DATA" --listen "https://127.0.0.1:$WEB_PORT" --listen "mqtts://127.0.0.1:$MQTT_PORT")

echo "browser test: $BIN ${UP_ARGS[*]}"
NO_COLOR=1 DEVICECLOUD_LOG=${DEVICECLOUD_LOG:-info} "$BIN" "${UP_ARGS[@]}" >"$LOG" 2>&1 &
SERVER_PID=$!

# `up` prints the dashboard address and the login, e.g.
#   Dashboard: https://127.0.0.1:PORT/
#   Login: admin / PASSWORD
URL= USERNAME= PASSWORD=
for _ in $(seq 600); do
    kill -0 "$SERVER_PID" 2>/dev/null || { tail -n 40 "$LOG" >&2; die "devicecloud up exited early (log above, full log: $LOG)"; }
    URL=$(grep -i -m1 -oE 'dashboard[^h]*https://[^[:space:]]+' "$LOG" | grep -oE 'https://[^[:space:]]+' || true)
    [ -n "$URL" ] || URL=$(grep -m1 -oE "https://127\.0\.0\.1:$WEB_PORT/?[^[:space:]]*" "$LOG" || true)
    LOGIN=$(grep -i -m1 -E '^[[:space:]]*(login|user)[^:]*:[[:space:]]*[^[:space:]]+[[:space:]]*/[[:space:]]*[^[:space:]]+' "$LOG" || true)
    LOGIN_RE=':[[:space:]]*([^[:space:]/]+)[[:space:]]*/[[:space:]]*([^[:space:]]+)'
    if [[ $LOGIN =~ $LOGIN_RE ]]; then
        USERNAME=${BASH_REMATCH[1]}
        PASSWORD=${BASH_REMATCH[2]}
    else
        USERNAME=$(grep -i -m1 -oE '(user ?name|user)[[:space:]]*[:=][[:space:]]*[^[:space:],]+' "$LOG" | sed -E 's/.*[:=][[:space:]]*//' || true)
        PASSWORD=$(grep -i -m1 -oE 'password[[:space:]]*[:=][[:space:]]*[^[:space:],]+' "$LOG" | sed -E 's/.*[:=][[:space:]]*//' || true)
    fi
    [ -n "$URL" ] && [ -n "$PASSWORD" ] && break
    sleep 0.1
done
[ -n "$URL" ] || { tail -n 40 "$LOG" >&2; die "devicecloud up printed no dashboard URL within 60s (full log: $LOG)"; }
[ -n "$PASSWORD" ] || { tail -n 40 "$LOG" >&2; die "devicecloud up printed no admin password within 60s (full log: $LOG)"; }
USERNAME=${USERNAME:-admin}
if grep -q 'demo device could not start' "$LOG"; then
    grep -A1 'demo device could not start' "$LOG" >&2
    die "devicecloud up started without its simulated device 'demo' (full log: $LOG)"
fi
# Talk to the loopback address we chose, whatever host name the server prints (e.g. localhost,
# which chromium may try on ::1 first).
URL="https://127.0.0.1:$WEB_PORT/"
echo "browser test: dashboard $URL, login $USERNAME"

cd tests/browser
if ! DATA=$DATA ARTIFACTS=$ARTIFACTS CHROMIUM=$CHROMIUM node test.mjs "$URL" "$USERNAME" "$PASSWORD"; then
    echo "--- the last lines of devicecloud up's output ($LOG) ---" >&2
    tail -n 30 "$LOG" >&2
    exit 1
fi
