#!/usr/bin/env bash
# The coordinator's memory per in-flight transaction (issue 20, item 2).
#
# Starts a fresh `concord serve` (SQLite, fsync on) twice and drives it with
# `concord bench --hold`, whose no-op participants answer every Prepare
# only after a while, so that each client's transaction stays in flight
# (each client runs one transaction, all at once): first with a few clients
# (the baseline), then with many. The hold must stay under half the
# coordinator's prepare timeout (5 s): the calls that queue behind the
# first batches to a participant are held again. While each run
# holds, it samples the node's `concord_in_flight` gauge and its RSS. The
# figure is the growth of the RSS while the most transactions were in
# flight divided by the growth of the transactions in flight: what one more
# in-flight transaction costs, the node's fixed memory cancelled out. The
# same from the runs' peak RSS (VmHWM) is printed beside it: when the two
# differ, the peak came after the hold (the burst of decisions, log
# batches and phase-2 calls once the participants answer), not from the
# transactions in flight.
#
#   scripts/bench-memory.sh                    # 10,000 in flight on 16 connections
#   IN_FLIGHT=2048 CONNECTIONS=16 scripts/bench-memory.sh
#   CONCORD=path/to/concord scripts/bench-memory.sh --json
#
# Builds target/release/concord when CONCORD is not given and it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

CONCORD=${CONCORD:-target/release/concord}
IN_FLIGHT=${IN_FLIGHT:-10000}
BASELINE=${BASELINE:-64}
CONNECTIONS=${CONNECTIONS:-16}
HOLD=${HOLD:-1s}
json=false
[ "${1:-}" = "--json" ] && json=true

if [ ! -x "$CONCORD" ]; then
    cargo build --release --bin concord
fi

# The node's /metrics page (python3: on every machine, unlike curl).
metrics_page() {
    python3 -c 'import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())' \
        "http://127.0.0.1:$1/metrics" 2>/dev/null
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# measure CLIENTS: prints "<peak in flight> <RSS KiB then> <VmHWM KiB> <RSS KiB
# before the load>"
measure() {
    local clients=$1 dir port metrics pid bench peak=0 held=0 now rss hwm idle errors
    dir=$(mktemp -d)
    port=$(free_port)
    metrics=$(free_port)
    "$CONCORD" serve --listen "127.0.0.1:$port" --data-dir "$dir" \
        --metrics-listen "127.0.0.1:$metrics" >"$dir/serve.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
        metrics_page "$metrics" >/dev/null && break
        sleep 0.1
    done
    idle=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
    "$CONCORD" bench --coordinator "http://127.0.0.1:$port" --clients "$clients" \
        --connections "$CONNECTIONS" --hold "$HOLD" --transactions "$clients" \
        --duration 60s --json \
        >"$dir/bench.json" 2>"$dir/bench.log" &
    bench=$!
    while kill -0 "$bench" 2>/dev/null; do
        # A page that failed to come (a busy node) is a sample skipped.
        now=$(metrics_page "$metrics" |
            awk '/^concord_in_flight\{kind="2pc"\}/ {print int($2)}') || now=""
        rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
        if [ -n "$now" ] && { [ "$now" -gt "$peak" ] ||
            { [ "$now" -eq "$peak" ] && [ "$rss" -gt "$held" ]; }; }; then
            peak=$now
            held=$rss
        fi
        sleep 0.25
    done
    wait "$bench" || { cat "$dir/bench.log" >&2; kill "$pid"; return 1; }
    errors=$(grep -o '"errors":[0-9]*' "$dir/bench.json" | cut -d: -f2)
    [ "${errors:-0}" = 0 ] || echo "warning: ${errors} of ${clients} transactions failed" >&2
    hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
    echo "$peak $held $hwm $idle"
}

read -r base_peak base_held base_hwm base_idle < <(measure "$BASELINE")
read -r peak held hwm idle < <(measure "$IN_FLIGHT")
per() {
    awk -v a="$1" -v b="$2" -v x="$base_peak" -v y="$peak" \
        'BEGIN { if (y > x) printf "%.2f", (b - a) / (y - x); else print "nan" }'
}
per_held=$(per "$base_held" "$held")
per_hwm=$(per "$base_hwm" "$hwm")
if $json; then
    printf '{"in_flight":%s,"rss_kib":%s,"vm_hwm_kib":%s,"baseline_in_flight":%s,"baseline_rss_kib":%s,"baseline_vm_hwm_kib":%s,"idle_rss_kib":%s,"kib_per_in_flight":%s,"hwm_kib_per_in_flight":%s,"connections":%s,"hold":"%s"}\n' \
        "$peak" "$held" "$hwm" "$base_peak" "$base_held" "$base_hwm" "$base_idle" \
        "$per_held" "$per_hwm" "$CONNECTIONS" "$HOLD"
else
    echo "idle node: ${base_idle} KiB RSS"
    echo "${base_peak} in flight: RSS ${base_held} KiB (peak of the run ${base_hwm} KiB)"
    echo "${peak} in flight: RSS ${held} KiB (peak of the run ${hwm} KiB; ${CONNECTIONS} connections)"
    echo "per in-flight transaction: ${per_held} KiB (${per_hwm} KiB by the runs' peaks)"
fi
