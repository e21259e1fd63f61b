#!/bin/sh
# A/A calibration: stands in for `oxray run -c FILE` by running V2Ray on the same file, so the
# "oxray" column measures V2Ray too and every ratio should be ~1.0. How far the ratios stray is
# the noise floor of this machine at that moment:
#   OXRAY=bench/v2ray-as-oxray.sh bench/run.sh --quick
# exec keeps the PID the driver records = V2Ray's own PID (RSS and CPU are read from it).
[ "$1" = run ] && [ "$2" = -c ] || { echo "usage: $0 run -c FILE" >&2; exit 2; }
exec "${V2RAY:-v2ray}" -config "$3"
