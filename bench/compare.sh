#!/usr/bin/env bash
# bench/compare.sh: Mosquitto against moat on this machine, same scenarios, same generator.
#
# Starts each broker fresh for every run, pinned to core 0 (taskset), with equivalent settings
# (bench/mosquitto.conf on port 1884, bench/moat.toml on port 1885: 20 in flight, 1000 queued,
# no persistence, no auth, no $SYS, one thread; TLS on 8884 and 8885 with the same RSA-2048
# certificate from bench/tls-certs.sh), runs moat-bench pinned to core 1 against it,
# alternating the brokers (and which one goes first) over several rounds, and writes to OUT
# (default target/compare/<UTC time>):
#   OUT/results.jsonl   one JSON report per run (moat-bench --json, tagged by broker)
#   OUT/summary.md      medians per scenario and broker, moat/Mosquitto ratios, peak RSS
#   OUT/machine.txt     nproc, CPU model, kernel, versions, git revision
#   OUT/*.log           broker and generator logs
#
# Usage: bench/compare.sh [--rounds N] [--duration S] [--connections N] [--out DIR]
#                         [--only REGEX] [--no-build] [--moat-config FILE] [--auth]
# --moat-config runs moat with another configuration than bench/moat.toml (e.g.
# bench/moat-no-plugin.toml: no policy plugin consulted at all).
# --auth makes both brokers authenticate and authorize every client from the same files
# (bench/auth-files.sh: a Mosquitto password_file with 1,001 users and an acl_file with their
# rules): Mosquitto with password_file/acl_file and allow_anonymous false, moat with the
# bundled static-acl plugin granted the same two files (bench/static-acl.toml appended to the
# moat configuration); every client connects as user "bench".
set -euo pipefail

ROUNDS=3
DURATION=10
WARMUP=2
CONNECTIONS=10000
OUT=""
ONLY=""
MOAT_CONFIG=bench/moat.toml
MOSQ_CONFIG=bench/mosquitto.conf
AUTH=0
AUTH_DIR=target/bench-auth
BUILD=1
BROKER_CORE=0
GEN_CORE=1
MOSQ_PORT=1884
MOAT_PORT=1885
MOSQ_TLS_PORT=8884
MOAT_TLS_PORT=8885
TLS_DIR=target/bench-tls

die() { echo "compare.sh: $*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --connections) CONNECTIONS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --only) ONLY="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --moat-config) MOAT_CONFIG="$2"; shift 2 ;;
        --auth) AUTH=1; shift ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-target/compare/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"

MOSQUITTO=/usr/sbin/mosquitto
MOAT="$ROOT/target/release/moat"
BENCH="$ROOT/target/release/moat-bench"

# --- Preconditions -------------------------------------------------------------------------
[[ -x "$MOSQUITTO" ]] || die "$MOSQUITTO not found (Debian package mosquitto)"
command -v taskset >/dev/null || die "taskset not found (util-linux)"
command -v ss >/dev/null || die "ss not found (iproute2)"
[[ "$(nproc)" -ge 2 ]] || die "needs at least 2 cores (broker on $BROKER_CORE, generator on $GEN_CORE)"
# The generator holds CONNECTIONS sockets, the broker as many: both need the descriptors.
NOFILE="$(ulimit -n)"
if [[ "$NOFILE" != unlimited && "$NOFILE" -lt $((CONNECTIONS + 200)) ]]; then
    die "ulimit -n is $NOFILE: too low for $CONNECTIONS connections"
fi
for port in "$MOSQ_PORT" "$MOAT_PORT" "$MOSQ_TLS_PORT" "$MOAT_TLS_PORT"; do
    if ss -Hltn "sport = :$port" | grep -q .; then
        die "port $port is already in use: is another broker running?"
    fi
done

if [[ "$BUILD" == 1 ]]; then
    echo "== building moat and moat-bench (release)"
    cargo build --release -p moat -p moat-bench >"$OUT/build.log" 2>&1 \
        || { tail -30 "$OUT/build.log" >&2; die "build failed (see $OUT/build.log)"; }
fi
[[ -x "$MOAT" && -x "$BENCH" ]] || die "missing $MOAT or $BENCH (build first)"
# Both configurations name these files (RSA-2048 CA and server certificate, made once).
bench/tls-certs.sh "$TLS_DIR" || die "cannot make the TLS certificates (openssl)"
CREDENTIALS=()
if [[ "$AUTH" == 1 ]]; then
    bench/auth-files.sh "$AUTH_DIR" || die "cannot make the password and ACL files"
    # Mosquitto: the same settings, anonymous clients refused, the two files.
    sed 's/^allow_anonymous true$/allow_anonymous false/' bench/mosquitto.conf >"$AUTH_DIR/mosquitto.conf"
    printf 'password_file %s/passwd\nacl_file %s/acl\n' "$AUTH_DIR" "$AUTH_DIR" >>"$AUTH_DIR/mosquitto.conf"
    MOSQ_CONFIG="$AUTH_DIR/mosquitto.conf"
    # moat: the same settings plus the static-acl plugin (its grants name files relative to the
    # configuration file, which is why the configuration is written beside them).
    cat "$MOAT_CONFIG" bench/static-acl.toml >"$AUTH_DIR/moat.toml"
    MOAT_CONFIG="$AUTH_DIR/moat.toml"
    CREDENTIALS=(--username bench --password "$(cat "$AUTH_DIR/bench.password")")
fi

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "nproc: $(nproc)"
    lscpu | grep -E '^(Model name|Thread|Core|Socket|CPU\(s\)|Hypervisor)' || true
    echo "kernel: $(uname -r)"
    echo "mosquitto: $("$MOSQUITTO" -h 2>/dev/null | head -1)"
    echo "moat: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- broker 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "moat config: $MOAT_CONFIG"
    echo "mosquitto config: $MOSQ_CONFIG"
    echo "rounds: $ROUNDS, duration: ${DURATION}s, warm-up: ${WARMUP}s, connections: $CONNECTIONS"
    echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/machine.txt"

# --- Brokers -------------------------------------------------------------------------------
BROKER_PID=""

stop_broker() {
    if [[ -n "$BROKER_PID" ]] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill -TERM "$BROKER_PID" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$BROKER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
    fi
    BROKER_PID=""
}
trap stop_broker EXIT
trap 'echo "compare.sh: interrupted" >&2; exit 130' INT TERM

# start_broker NAME: starts it pinned to BROKER_CORE and waits until its port listens.
start_broker() {
    local name="$1" port log="$OUT/$1.log"
    case "$name" in
        mosquitto)
            port=$MOSQ_PORT
            taskset -c "$BROKER_CORE" "$MOSQUITTO" -c "$MOSQ_CONFIG" >>"$log" 2>&1 &
            ;;
        moat)
            port=$MOAT_PORT
            taskset -c "$BROKER_CORE" "$MOAT" --config "$MOAT_CONFIG" >>"$log" 2>&1 &
            ;;
    esac
    BROKER_PID=$!
    for _ in $(seq 100); do
        if ss -Hltn "sport = :$port" | grep -q .; then
            return 0
        fi
        kill -0 "$BROKER_PID" 2>/dev/null || { tail -5 "$log" >&2; die "$name exited at start (see $log)"; }
        sleep 0.1
    done
    die "$name did not listen on port $port within 10 s (see $log)"
}

# port_of BROKER SCENARIO: the port a scenario runs against ("TLS ..." ones: the TLS listener).
port_of() {
    if [[ "$2" == TLS* ]]; then
        [[ "$1" == mosquitto ]] && echo "$MOSQ_TLS_PORT" || echo "$MOAT_TLS_PORT"
    else
        [[ "$1" == mosquitto ]] && echo "$MOSQ_PORT" || echo "$MOAT_PORT"
    fi
}

# --- Scenarios: "name|moat-bench arguments" ------------------------------------------------
LOAD="-p 64 -d $DURATION -w $WARMUP"
SCENARIOS=(
    "QoS 0 fan-in 4->1|fan-in -n 4 -q 0 $LOAD"
    "QoS 0 fan-out 1->16|fan-out -n 16 -q 0 $LOAD"
    "QoS 0 many-to-many 8x(1->1)|many-to-many -n 8 -q 0 $LOAD"
    "QoS 0 fan-in 4->1 at 400k msg/s|fan-in -n 4 -q 0 -r 400000 $LOAD"
    "QoS 0 fan-out 1->16 at 60k msg/s|fan-out -n 16 -q 0 -r 60000 $LOAD"
    "QoS 0 1->1 at 5k msg/s|fan-in -n 1 -q 0 -r 5000 $LOAD"
    "QoS 1 1->1 at 5k msg/s|fan-in -n 1 -q 1 -r 5000 $LOAD"
    "QoS 1 fan-in 4->1|fan-in -n 4 -q 1 --window 64 $LOAD"
    "idle connections ${CONNECTIONS}|connections -n $CONNECTIONS --concurrency 64 --hold 2"
    # Plain TCP connects on the same terms as the TLS handshakes below, for the TLS cost.
    "TCP connects 2000|connections -n 2000 --concurrency 64 --hold 0"
    # TLS 1.3 (whatever the client and broker agree on), RSA-2048 server certificate, a full
    # handshake per connection (the client keeps no session cache).
    "TLS handshakes 2000|connections -n 2000 --concurrency 64 --hold 0"
    "TLS QoS 0 many-to-many 8x(1->1)|many-to-many -n 8 -q 0 $LOAD"
    "TLS QoS 1 1->1 at 5k msg/s|fan-in -n 1 -q 1 -r 5000 $LOAD"
)

FAILED=()
run_one() {
    local broker="$1" round="$2" name="$3" args="$4" base
    # A fresh range of source addresses per run: no run meets another's TIME_WAIT ports.
    base="127.$((round + 1)).$([[ "$broker" == mosquitto ]] && echo 1 || echo 2).2"
    start_broker "$broker"
    echo "-- round $round, $broker: $name"
    # shellcheck disable=SC2086
    if taskset -c "$GEN_CORE" "$BENCH" --json --tag "$broker" --name "$name" \
        --broker-pid "$BROKER_PID" -b "127.0.0.1:$(port_of "$broker" "$name")" $args \
        $([[ "$args" == connections* ]] && echo "--source-base $base") \
        $([[ "$name" == TLS* ]] && echo "--tls-ca $TLS_DIR/ca.pem") "${CREDENTIALS[@]}" \
        >>"$RESULTS" 2>>"$OUT/bench.log"; then
        tail -1 "$RESULTS" | "$BENCH" summarize - --baseline "$broker" | sed -n '3,$p' \
            | grep '^|' | cut -d'|' -f3,4 | sed 's/^/     /'
    else
        echo "   FAILED (see $OUT/bench.log)" >&2
        FAILED+=("round $round, $broker: $name")
    fi
    stop_broker
    sleep 1
}

for round in $(seq "$ROUNDS"); do
    echo "== round $round of $ROUNDS"
    if ((round % 2)); then order=(mosquitto moat); else order=(moat mosquitto); fi
    for entry in "${SCENARIOS[@]}"; do
        name="${entry%%|*}"
        args="${entry#*|}"
        [[ -z "$ONLY" || "$name" =~ $ONLY ]] || continue
        for broker in "${order[@]}"; do
            run_one "$broker" "$round" "$name" "$args"
        done
    done
done

echo "== summary ($OUT/summary.md)"
"$BENCH" summarize "$RESULTS" --baseline mosquitto | tee "$OUT/summary.md"
if ((${#FAILED[@]})); then
    printf 'compare.sh: %d run(s) failed:\n' "${#FAILED[@]}" >&2
    printf '  %s\n' "${FAILED[@]}" >&2
    exit 1
fi
