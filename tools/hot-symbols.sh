#!/usr/bin/env bash
# Regenerates link/hot-symbols.txt, the list of functions build.rs asks the linker to place first.
#
#   tools/hot-symbols.sh        # needs valgrind (apt-get install valgrind); about a minute
#
# It runs a portal and a bridge (the reverse proxy of docs/REVERSE.md, as bench/ runs it) under
# callgrind through their everyday work: start-up, tunnel set-up and heartbeats, bulk both ways,
# many short connections, round trips, a status signal. Every function they executed goes into the
# list, in the order first run: first what ran while serving, then, between two markers, what ran
# only before oxray_startup_done (src/startup_text.rs drops those pages once the instance is ready).
# Re-run it after large changes or dependency updates: stale names are skipped by the linker, so an
# old list only loses effect (idle RSS creeps back up), never breaks.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
command -v valgrind >/dev/null || { echo "hot-symbols: valgrind is needed (apt-get install valgrind)" >&2; exit 1; }

cargo build --release --quiet --bin oxray
cargo build --release --quiet --manifest-path bench/loadgen/Cargo.toml
newest() { ls -t "$@" 2>/dev/null | head -n 1 || true; }
oxray=$(newest target/*/release/oxray target/release/oxray)
loadgen=$(newest bench/loadgen/target/*/release/loadgen bench/loadgen/target/release/loadgen)

dir=$(mktemp -d /tmp/oxray-hot.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
read -r svc ext ic < <(python3 -c 'import socket
s=[socket.socket() for _ in range(3)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
id=b831381d-6324-4d53-ad4f-8cda48b30811
cat >"$dir/portal.json" <<JSON
{"log": {"loglevel": "warning"},
 "reverse": {"portals": [{"tag": "portal", "domain": "hot.example.com"}]},
 "inbounds": [
  {"tag": "external", "listen": "127.0.0.1", "port": $ext, "protocol": "dokodemo-door",
   "settings": {"address": "127.0.0.1", "port": 80, "network": "tcp"}},
  {"tag": "interconn", "listen": "127.0.0.1", "port": $ic, "protocol": "vmess",
   "settings": {"clients": [{"id": "$id"}]}}],
 "routing": {"rules": [{"type": "field", "inboundTag": ["external"], "outboundTag": "portal"},
                       {"type": "field", "inboundTag": ["interconn"], "outboundTag": "portal"}]}}
JSON
cat >"$dir/bridge.json" <<JSON
{"log": {"loglevel": "warning"},
 "reverse": {"bridges": [{"tag": "bridge", "domain": "hot.example.com"}]},
 "outbounds": [{"tag": "out", "protocol": "freedom", "settings": {"redirect": "127.0.0.1:$svc"}},
  {"tag": "interconn", "protocol": "vmess",
   "settings": {"vnext": [{"address": "127.0.0.1", "port": $ic, "users": [{"id": "$id"}]}]}}],
 "routing": {"rules": [{"type": "field", "inboundTag": ["bridge"], "domain": ["full:hot.example.com"], "outboundTag": "interconn"},
                       {"type": "field", "inboundTag": ["bridge"], "outboundTag": "out"}]}}
JSON
"$loadgen" serve --port "$svc" >"$dir/serve.log" 2>&1 & pids+=($!)
for role in portal bridge; do
    valgrind --tool=callgrind --demangle=no --dump-before=oxray_startup_done \
        --callgrind-out-file="$dir/$role.callgrind" \
        "$oxray" run -c "$dir/$role.json" >"$dir/$role.log" 2>&1 &
    pids+=($!)
done
portal=${pids[1]} bridge=${pids[2]}
addr=127.0.0.1:$ext
"$loadgen" firstbyte --addr "$addr" --timeout-secs 60 >/dev/null
for dir_ in up down; do
    "$loadgen" bulk --addr "$addr" --conns 1 --bytes 4194304 --dir "$dir_" >/dev/null
    "$loadgen" bulk --addr "$addr" --conns 4 --bytes 4194304 --dir "$dir_" >/dev/null
done
"$loadgen" connrate --addr "$addr" --seconds 2 >/dev/null
"$loadgen" pingpong --addr "$addr" --count 200 --warmup 10 >/dev/null
kill -USR1 "$portal" "$bridge"
sleep 3 # heartbeats, the heap trim tick, idle timers
kill -TERM "$portal" "$bridge"
wait "$portal" "$bridge" || true
python3 tools/hot_symbols.py "$oxray" "$dir"/*.callgrind* >link/hot-symbols.txt
echo "hot-symbols: $(wc -l <link/hot-symbols.txt) functions -> link/hot-symbols.txt (profiles in $dir)" >&2
