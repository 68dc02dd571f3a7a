#!/usr/bin/env bash
# bench/durable.sh: QoS 1 throughput and latency with durable storage, against in-memory moat
# and against Mosquitto with persistence on.
#
# Brokers (each started fresh per run on an empty data directory, pinned to core 0; the
# generator on core 1):
#   moat-memory    [storage] backend = "memory"
#   moat-sync      backend = "disk", durability = "sync" (on disk before PUBACK, group commit)
#   moat-batched   backend = "disk", durability = "batched", commit_interval_ms = 10
#   mosquitto      persistence true, autosave_interval 1 (Mosquitto writes its whole database
#                  every second; it never fsyncs per message, so it compares with "batched")
# Limits as in bench/compare.sh (20 in flight, 1000 queued, one thread). Every client uses a
# persistent session (moat-bench --persistent), which is what puts QoS 1 messages on disk.
# Also: moat-memory with clean sessions (the plain in-memory path, for the overhead check).
#
# Usage: bench/durable.sh [--rounds N] [--duration S] [--out DIR] [--only REGEX] [--no-build]
# Writes OUT/results.jsonl and OUT/summary.md (default OUT: target/durable/<UTC time>).
set -euo pipefail

ROUNDS=3
DURATION=10
WARMUP=2
OUT=""
ONLY=""
BUILD=1
PORT=1897

die() { echo "durable.sh: $*" >&2; exit 1; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --only) ONLY="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-target/durable/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"
MOAT="$ROOT/target/release/moat"
BENCH="$ROOT/target/release/moat-bench"
MOSQUITTO=/usr/sbin/mosquitto

command -v taskset >/dev/null || die "taskset not found (util-linux)"
[[ "$(nproc)" -ge 2 ]] || die "needs at least 2 cores"
if [[ "$BUILD" == 1 ]]; then
    echo "== building moat and moat-bench (release)"
    cargo build --release -p moat -p moat-bench >"$OUT/build.log" 2>&1 \
        || { tail -30 "$OUT/build.log" >&2; die "build failed"; }
fi
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "nproc: $(nproc); kernel: $(uname -r); filesystem: $(df -T "$OUT" | awk 'NR==2 {print $2}')"
    echo "moat: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/machine.txt"

BROKER_PID=""
stop_broker() {
    if [[ -n "$BROKER_PID" ]] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill -TERM "$BROKER_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$BROKER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
    fi
    BROKER_PID=""
}
trap stop_broker EXIT

# start_broker NAME DATA_DIR
start_broker() {
    local name="$1" data="$2" conf="$OUT/$1.conf"
    rm -rf "$data" && mkdir -p "$data"
    case "$name" in
        mosquitto)
            [[ -x "$MOSQUITTO" ]] || die "$MOSQUITTO not found (Debian package mosquitto)"
            cat > "$conf" <<CONF
user root
per_listener_settings false
allow_anonymous true
listener $PORT 127.0.0.1
max_inflight_messages 20
max_queued_messages 1000
persistence true
persistence_location $data/
autosave_interval 1
sys_interval 0
log_dest stderr
log_type error
CONF
            taskset -c 0 "$MOSQUITTO" -c "$conf" >>"$OUT/$name.log" 2>&1 &
            ;;
        moat-*)
            local backend=disk durability=sync
            [[ "$name" == moat-memory* ]] && backend=memory
            [[ "$name" == moat-batched ]] && durability=batched
            cat > "$conf" <<CONF
[[listener]]
bind = "127.0.0.1:$PORT"
[limits]
max_inflight = 20
max_queued_messages = 1000
queue_overflow = "drop-newest"
receive_maximum = 65535
[sys]
interval = 0
[log]
filter = "warn"
[server]
worker_threads = 1
[storage]
backend = "$backend"
durability = "$durability"
commit_interval_ms = 10
dir = "$data"
CONF
            taskset -c 0 "$MOAT" --config "$conf" >>"$OUT/$name.log" 2>&1 &
            ;;
    esac
    BROKER_PID=$!
    for _ in $(seq 100); do
        ss -Hltn "sport = :$PORT" | grep -q . && return 0
        kill -0 "$BROKER_PID" 2>/dev/null || die "$name exited at start (see $OUT/$name.log)"
        sleep 0.1
    done
    die "$name did not listen within 10 s"
}

LOAD="-p 64 -d $DURATION -w $WARMUP"
# "name|brokers|moat-bench arguments"
SCENARIOS=(
    "QoS 1 fan-in 4->1, persistent|moat-memory moat-sync moat-batched mosquitto|fan-in -n 4 -q 1 --window 64 --persistent $LOAD"
    "QoS 1 fan-out 1->16, persistent|moat-memory moat-sync moat-batched mosquitto|fan-out -n 16 -q 1 --window 64 --persistent $LOAD"
    "QoS 1 1->1 at 5k msg/s, persistent|moat-memory moat-sync moat-batched mosquitto|fan-in -n 1 -q 1 -r 5000 --persistent $LOAD"
    "QoS 1 fan-in 4->1, clean sessions|moat-memory|fan-in -n 4 -q 1 --window 64 $LOAD"
)

for round in $(seq "$ROUNDS"); do
    echo "== round $round of $ROUNDS"
    for entry in "${SCENARIOS[@]}"; do
        IFS='|' read -r name brokers args <<<"$entry"
        [[ -z "$ONLY" || "$name" =~ $ONLY ]] || continue
        for broker in $brokers; do
            start_broker "$broker" "$OUT/data-$broker"
            echo "-- $broker: $name"
            # shellcheck disable=SC2086
            taskset -c 1 "$BENCH" --json --tag "$broker" --name "$name" \
                --broker-pid "$BROKER_PID" -b "127.0.0.1:$PORT" $args \
                >>"$RESULTS" 2>>"$OUT/bench.log" || echo "   FAILED (see $OUT/bench.log)" >&2
            stop_broker
            sleep 1
        done
    done
done
echo "== summary ($OUT/summary.md)"
"$BENCH" summarize "$RESULTS" --baseline moat-memory | tee "$OUT/summary.md"
