#!/usr/bin/env bash
# make run: builds Prism in release mode and starts one gateway and two processors on this
# machine with the local-disk store, waits until the gateway says ready, prints a curl line to
# try, and stops everything cleanly on Ctrl-C.
#
# Ports (override with the environment): gateway 8080 (PRISM_RUN_GATEWAY_PORT), processors
# 7071/7072 (PRISM_RUN_PROCESSOR1_PORT, PRISM_RUN_PROCESSOR2_PORT), their status pages 9091/9092
# (PRISM_RUN_PROCESSOR1_STATUS_PORT, ...). Stored files go to ./data (PRISM_DATA_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."

GATEWAY_PORT=${PRISM_RUN_GATEWAY_PORT:-8080}
P1=${PRISM_RUN_PROCESSOR1_PORT:-7071}
P2=${PRISM_RUN_PROCESSOR2_PORT:-7072}
S1=${PRISM_RUN_PROCESSOR1_STATUS_PORT:-9091}
S2=${PRISM_RUN_PROCESSOR2_STATUS_PORT:-9092}
DATA=${PRISM_DATA_DIR:-$PWD/data}
LOGS=${PRISM_RUN_LOG_DIR:-$PWD/.run-logs}

# PRISM_RUN_CONFIGURATION=debug reuses the test build (the system tests do this). PRISM_BIN_DIR
# runs binaries built elsewhere and builds nothing (the system tests pass it on when they use it).
CONFIGURATION=${PRISM_RUN_CONFIGURATION:-release}
if [[ -n "${PRISM_BIN_DIR:-}" ]]; then
  BIN=$PRISM_BIN_DIR
else
  echo "building ($CONFIGURATION; the first release build takes several minutes)..." >&2
  swift build -c "$CONFIGURATION" --product prism-processor >&2
  swift build -c "$CONFIGURATION" --product prism-gateway >&2
  BIN=$(swift build -c "$CONFIGURATION" --show-bin-path)
fi

for port in "$GATEWAY_PORT" "$P1" "$P2" "$S1" "$S2"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is already in use; set PRISM_RUN_GATEWAY_PORT / PRISM_RUN_PROCESSOR1_PORT / PRISM_RUN_PROCESSOR2_PORT" >&2
    exit 1
  fi
done

mkdir -p "$LOGS" "$DATA"
pids=()
stop() {
  trap - INT TERM EXIT
  echo >&2
  echo "stopping (draining uploads in flight)..." >&2
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "stopped." >&2
}
trap stop INT TERM EXIT

# Both processors share this machine's cores: half the cores each, so workers match cores.
WORKERS=$(( $(nproc) / 2 )); (( WORKERS >= 1 )) || WORKERS=1
# Each processor limits glibc's malloc to one arena itself (Sources/CMallocArena).
"$BIN/prism-processor" --port "$P1" --status-port "$S1" --workers "$WORKERS" >"$LOGS/processor-1.log" 2>&1 &
pids+=($!)
"$BIN/prism-processor" --port "$P2" --status-port "$S2" --workers "$WORKERS" >"$LOGS/processor-2.log" 2>&1 &
pids+=($!)
"$BIN/prism-gateway" --port "$GATEWAY_PORT" --processors "127.0.0.1:$P1,127.0.0.1:$P2" \
  --data-dir "$DATA" >"$LOGS/gateway.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 100); do
  if curl -fs "http://127.0.0.1:$GATEWAY_PORT/readyz" >/dev/null 2>&1; then break; fi
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "a service exited early; see $LOGS/" >&2; exit 1; }
  done
  sleep 0.1
done
curl -fs "http://127.0.0.1:$GATEWAY_PORT/readyz" >/dev/null || { echo "the gateway did not become ready; see $LOGS/" >&2; exit 1; }

cat <<MSG

Prism is running: gateway on http://127.0.0.1:$GATEWAY_PORT with two processors.
Stored files go to $DATA; logs are in $LOGS/.

Try:
  curl -F file=@photo.jpg http://127.0.0.1:$GATEWAY_PORT/v1/images

Recipes: curl http://127.0.0.1:$GATEWAY_PORT/v1/recipes     Metrics: curl http://127.0.0.1:$GATEWAY_PORT/metrics
Press Ctrl-C to stop.
MSG
wait -n "${pids[@]}" || true
echo "a service exited; see $LOGS/" >&2
