#!/usr/bin/env bash
# oxray vs V2Ray 4.34, one run, same configs: see docs/BENCHMARKS.md.
#
#   bench/run.sh            # default: 5 repetitions per figure, medians (~2-3 min)
#   bench/run.sh --quick    # 1 repetition, small sizes (~1 min): for checking the harness
#   bench/run.sh --reps 5 --bulk-bytes 2147483648   # any other option goes to `loadgen drive`
#   bench/run.sh --memory --reps 3   # the memory rows only (idle RSS, RSS per held conn; ~1 min)
#   OXRAY_B=old/oxray V2RAY=bench/oxray-as-v2ray.sh bench/run.sh --memory   # the same, new vs old build
#
# Env: OXRAY=path (default target/<host triple>/release/oxray, built here; see .cargo/config.toml), V2RAY=path (default: v2ray on PATH),
#      SKIP_OXRAY_BUILD=1 to use an existing binary as is,
#      RATHOLE=path (default: rathole $RATHOLE_VERSION, installed here by `cargo install` into bench/.rathole),
#      OPS_FRAGMENT=path (default bench/ops-on.json: JSON deep-merged into both configs of the "ops on" variant).
# Never run from cargo test or CI: it takes minutes and its numbers need a quiet machine.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cd "$repo"

# 2,000 held connections need ~2,000 fds in each of loadgen, service, portal and bridge.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 8192 ]; then
    echo "bench: ulimit -n is $(ulimit -n); 2,000 held connections need >= 8192" >&2
    exit 1
fi

# .cargo/config.toml sets build.target, so artifacts live under target/<host triple>/.
host=$(rustc -vV | sed -n 's/^host: //p')

echo "== building loadgen (bench/loadgen, release)" >&2
cargo build --release --quiet --manifest-path "$here/loadgen/Cargo.toml"
loadgen="$here/loadgen/target/$host/release/loadgen"

oxray="${OXRAY:-$repo/target/$host/release/oxray}"
if [ -z "${OXRAY:-}" ] && [ -z "${SKIP_OXRAY_BUILD:-}" ]; then
    echo "== building oxray (cargo build --release)" >&2
    if ! cargo build --release --quiet --bin oxray; then
        echo "bench: !!! oxray does not build: measuring V2Ray only !!!" >&2
        # A stale binary from an older commit would be worse than none.
        oxray=""
    fi
fi
if [ -n "$oxray" ] && [ ! -x "$oxray" ]; then
    echo "bench: !!! no oxray binary at $oxray: measuring V2Ray only !!!" >&2
    oxray=""
fi

# A stale link/hot-symbols.txt (see build.rs) costs idle memory, never correctness: say so. A fresh
# list is all present; 97 % present (the per-connection functions renamed) cost 1.3 MiB of idle RSS.
if [ -n "$oxray" ] && [ -f "$repo/link/hot-symbols.txt" ] && command -v nm >/dev/null; then
    listed=$(grep -c . "$repo/link/hot-symbols.txt" || true)
    present=$(nm "$oxray" 2>/dev/null | awk '{print $NF}' | grep -Fxc -f "$repo/link/hot-symbols.txt" || true)
    if [ "${listed:-0}" -gt 0 ] && [ $((present * 100 / listed)) -lt 98 ]; then
        echo "bench: NOTE only $present of $listed functions of link/hot-symbols.txt are in the binary;" \
            "run tools/hot-symbols.sh to refresh it (idle RSS suffers, nothing else)" >&2
    fi
fi

v2ray="${V2RAY:-$(command -v v2ray || true)}"
[ -n "$v2ray" ] || echo "bench: !!! v2ray not installed: oxray only, no ratios !!!" >&2

# rathole (issue 16): a pinned release from crates.io, built once and cached under bench/.rathole.
# Plain TCP transport only, so no TLS/noise features (and no OpenSSL headers needed).
# Without --locked: its 0.5.0 lock file pins `time` 0.3.29, which no longer compiles on rustc >= 1.80.
RATHOLE_VERSION=0.5.0
rathole="${RATHOLE:-$here/.rathole/bin/rathole}"
# The --rig and --memory runs have no rathole column.
case " $* " in *" --rig "* | *" --memory "*) rathole="" ;; esac
if [ -n "$rathole" ] && [ -z "${RATHOLE:-}" ] && ! "$rathole" --version 2>/dev/null | grep -qF "$RATHOLE_VERSION"; then
    echo "== installing rathole $RATHOLE_VERSION (cargo install, cached in bench/.rathole)" >&2
    if ! CARGO_TARGET_DIR="$here/.rathole/target" cargo install --quiet rathole --version "$RATHOLE_VERSION" \
        --no-default-features --features server,client --root "$here/.rathole" >"$here/.rathole.log" 2>&1; then
        echo "bench: !!! cargo install rathole $RATHOLE_VERSION failed: no rathole column; why:" >&2
        grep -E '^error' -A6 "$here/.rathole.log" | head -20 >&2 || tail -20 "$here/.rathole.log" >&2
        rathole=""
    fi
    # The binary is the cache; its build tree (~450 MB) is not worth the disk.
    rm -rf "$here/.rathole/target"
fi
[ -z "$rathole" ] || [ -x "$rathole" ] || { echo "bench: !!! no rathole at $rathole: no rathole column !!!" >&2; rathole=""; }

ops_fragment="${OPS_FRAGMENT:-$here/ops-on.json}"

# The driver records the PIDs it starts and kills only those (also on Ctrl-C / SIGTERM).
exec "$loadgen" drive --oxray "$oxray" --v2ray "$v2ray" --rathole "$rathole" --ops-fragment "$ops_fragment" \
    --out "$here/results" "$@"
