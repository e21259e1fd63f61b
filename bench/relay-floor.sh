#!/usr/bin/env bash
# The latency floor under the pinned round-trip row: a 64 B round trip through two plain relay
# processes, everything on CPU 0, compared with the same round trip straight to the service. The
# reverse tunnel crosses the same four process hops (portal and bridge, each twice), so what a chain
# adds is what a two-process relay costs on this machine before any protocol work. Three chains:
# the plainest relay possible (`loadgen relay`: blocking sockets, a thread per direction), oxray
# and V2Ray as dokodemo-door -> freedom (no VMess, no Mux). See docs/BENCHMARKS.md.
#
#   bench/relay-floor.sh                 # oxray (built as bench/run.sh does), and V2Ray if installed
#   OXRAY=path V2RAY=path bench/relay-floor.sh
#
# Loopback only; it ends exactly the processes it started.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
host="$(rustc -vV | sed -n 's/^host: //p')"
loadgen="$here/loadgen/target/$host/release/loadgen"
cargo build --release --quiet --manifest-path "$here/loadgen/Cargo.toml"
if [[ -z "${OXRAY:-}" ]]; then
    (cd "$root" && cargo build --release --quiet --bin oxray)
    OXRAY="$root/target/$host/release/oxray"
fi
V2RAY="${V2RAY:-$(command -v v2ray || true)}"
count="${COUNT:-10000}"
svc=27101 a=27102 b=27103
dir="$(mktemp -d /tmp/oxray-floor.XXXXXX)"
pids=()
stop() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; pids=(); }
trap 'stop; rm -rf "$dir"' EXIT

relay_config() { # listen port, forward port
    cat <<J
{"log": {"loglevel": "warning", "access": "none"},
 "inbounds": [{"listen": "127.0.0.1", "port": $1, "protocol": "dokodemo-door",
               "settings": {"address": "127.0.0.1", "port": $2, "network": "tcp"}}],
 "outbounds": [{"protocol": "freedom"}]}
J
}
relay_config $a $b >"$dir/a.json"
relay_config $b $svc >"$dir/b.json"

p50() { taskset -c 0 "$loadgen" pingpong --addr "127.0.0.1:$1" --count "$count" | sed 's/.*"p50_us":\([0-9.]*\).*/\1/'; }
wait_port() {
    for _ in $(seq 200); do
        if "$loadgen" pingpong --addr "127.0.0.1:$1" --count 1 --warmup 0 >/dev/null 2>&1; then return 0; fi
        sleep 0.05
    done
    echo "nothing answers on 127.0.0.1:$1" >&2
    return 1
}

taskset -c 0 "$loadgen" serve --port $svc >"$dir/serve.log" 2>&1 &
pids+=($!)
wait_port $svc
direct="$(p50 $svc)"
echo "direct to the service, all on CPU 0: p50 $direct us"

hop() { # name, config (a.json or b.json), listen port, forward port: starts one relay on CPU 0
    case "$1" in
        # exec: the background job's PID is the relay's own, so `kill` ends it.
        blocking) exec taskset -c 0 "$loadgen" relay --addr "127.0.0.1:$3" --to "127.0.0.1:$4" ;;
        oxray) exec taskset -c 0 "$OXRAY" run -c "$dir/$2" ;;
        v2ray) exec taskset -c 0 "$V2RAY" -config "$dir/$2" ;;
    esac
}

measure() { # name
    local name="$1"
    hop "$name" b.json $b $svc >"$dir/$name-b.log" 2>&1 &
    local pb=$!
    hop "$name" a.json $a $b >"$dir/$name-a.log" 2>&1 &
    local pa=$!
    pids+=($pb $pa)
    wait_port $a
    # Median of three runs' p50, as bench/run.sh takes medians.
    local best
    best="$(for _ in 1 2 3; do p50 $a; done | sort -n | sed -n 2p)"
    kill $pa $pb 2>/dev/null || true
    wait $pa $pb 2>/dev/null || true
    awk -v n="$name" -v t="$best" -v d="$direct" \
        'BEGIN{printf "%-8s two plain relays, all on CPU 0: p50 %.1f us, added %.1f us\n", n, t, t - d}'
}
# The floor of any relay: blocking sockets, a thread per direction (loadgen relay).
measure blocking
measure oxray
if [[ -n "$V2RAY" ]]; then
    measure v2ray
else
    echo "v2ray not found: V2Ray's chain skipped"
fi
