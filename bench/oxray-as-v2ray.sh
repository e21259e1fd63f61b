#!/bin/sh
# A/B rig: a second oxray build in the "V2Ray" column, to measure one change in one alternating run:
#   OXRAY_B=path/to/old/oxray V2RAY=bench/oxray-as-v2ray.sh bench/run.sh --rig --reps 6
# (the "oxray/V2Ray" ratio then reads new/old). OXRAY_B_THREADS=N sets OXRAY_THREADS for that column.
# exec keeps the PID the driver records.
[ "$1" = -config ] || { echo "usage: $0 -config FILE" >&2; exit 2; }
[ -z "${OXRAY_B_THREADS:-}" ] || export OXRAY_THREADS="$OXRAY_B_THREADS"
exec "${OXRAY_B:?set OXRAY_B to the other oxray binary}" run -c "$2"
