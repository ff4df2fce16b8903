#!/usr/bin/env bash
# The dashboard's browser test: starts `devicecloud up` (a server plus the simulated device `demo`)
# on loopback ports the kernel picks with a fresh data directory, then drives Debian's chromium through
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

# Every example app, installed as examples/README.md says, so the test covers /apps and the SDK
# too (test.mjs fails if one of them answers 404).
mkdir -p "$DATA/apps"
cp -r examples/*/ "$DATA/apps/"

# `--listen` replaces the configured listeners (like `devicecloud server`): a web port and the
# MQTT port the simulated device connects to, both on loopback, chosen by the kernel (port 0);
# the ready file says which.
UP_ARGS=(up --data "$DATA" --listen "https://127.0.0.1:0" --listen "mqtts://127.0.0.1:0")

echo "browser test: $BIN ${UP_ARGS[*]}"
NO_COLOR=1 DEVICECLOUD_LOG=${DEVICECLOUD_LOG:-info} "$BIN" "${UP_ARGS[@]}" >"$LOG" 2>&1 &
SERVER_PID=$!

# `up` writes DATA/ready.json (the same JSON as its `DEVICECLOUD_READY {...}` line) once the
# server and the demo device are up; the admin password is in the file it names.
READY=$DATA/ready.json
for _ in $(seq 600); do
    kill -0 "$SERVER_PID" 2>/dev/null || { tail -n 40 "$LOG" >&2; die "devicecloud up exited early (log above, full log: $LOG)"; }
    [ -s "$READY" ] && break
    sleep 0.1
done
[ -s "$READY" ] || { tail -n 40 "$LOG" >&2; die "devicecloud up wrote no $READY within 60s (full log: $LOG)"; }
mapfile -t FIELDS < <(node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  for (const v of [r.https, r.user, r.password_file, r.demo_device]) console.log(v ?? "");' "$READY")
HTTPS=${FIELDS[0]:-} USERNAME=${FIELDS[1]:-} PASSWORD_FILE=${FIELDS[2]:-} DEMO=${FIELDS[3]:-}
[ -n "$HTTPS" ] || die "$READY names no https listener: $(cat "$READY")"
[ -n "$PASSWORD_FILE" ] && [ -s "$PASSWORD_FILE" ] || die "$READY names no admin password file: $(cat "$READY")"
[ "$DEMO" = demo ] || { tail -n 40 "$LOG" >&2; die "devicecloud up started without its simulated device 'demo' (full log: $LOG)"; }
PASSWORD=$(cat "$PASSWORD_FILE")
# The bound loopback address rather than the URL's host name (localhost, which chromium may try
# on ::1 first).
URL="$HTTPS/"
echo "browser test: dashboard $URL, login $USERNAME"

cd tests/browser
if ! DATA=$DATA ARTIFACTS=$ARTIFACTS CHROMIUM=$CHROMIUM node test.mjs "$URL" "$USERNAME" "$PASSWORD"; then
    echo "--- the last lines of devicecloud up's output ($LOG) ---" >&2
    tail -n 30 "$LOG" >&2
    exit 1
fi
