#!/usr/bin/env bash
# Builds the libFuzzer targets with AddressSanitizer and runs each one.
#   scripts/fuzz.sh                 10 million executions per target (FUZZ_RUNS), release build
#   FUZZ_SECONDS=20 FUZZ_CONFIG=debug scripts/fuzz.sh
#                                    a bounded run per target on a debug build (`make test`)
# Seeds come from Tests/Fuzz/corpus (scripts/make_fuzz_seeds.py); what the fuzzer learns goes to
# .build-fuzz/corpus/, crashes to .build-fuzz/crashes/ (and fail this script).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${FUZZ_RUNS:-10000000}
seconds=${FUZZ_SECONDS:-0}
config=${FUZZ_CONFIG:-release}
# -enable-testing: the spec and connection targets reach internals (the planner, the processor's
# connection state machine) with @testable.
flags=(-c "$config" -Xswiftc -sanitize=fuzzer,address -Xswiftc -enable-testing)
targets=(frames specs connection)

# One -sanitize flag with both values: swiftc keeps only the last of several -sanitize flags, and
# `swift build --sanitize=fuzzer --sanitize=address` silently builds without coverage.
for t in "${targets[@]}"; do
  PRISM_FUZZ=1 swift build --scratch-path .build-fuzz "${flags[@]}" --product "prism-fuzz-$t" 2>&1 \
    | grep -Ev '^\[[0-9]+/[0-9]+\]|ld.gold: warning: Cannot export local symbol' || true
  test -x ".build-fuzz/$config/prism-fuzz-$t" || { echo "fuzz target prism-fuzz-$t did not build" >&2; exit 1; }
done

status=0
for t in "${targets[@]}"; do
  mkdir -p ".build-fuzz/corpus/$t" ".build-fuzz/crashes/$t"
  args=(-runs="$runs" -print_final_stats=1 -max_len=8192 -artifact_prefix=".build-fuzz/crashes/$t/")
  [[ $seconds != 0 ]] && args+=(-max_total_time="$seconds")
  echo "== fuzzing $t: ${args[*]}"
  if ! ".build-fuzz/$config/prism-fuzz-$t" "${args[@]}" ".build-fuzz/corpus/$t" "Tests/Fuzz/corpus/$t" 2>".build-fuzz/$t.log"; then
    status=1
    echo "prism-fuzz-$t FOUND A CRASH; the input is in .build-fuzz/crashes/$t/:" >&2
    tail -40 ".build-fuzz/$t.log" >&2
  fi
  grep -E "stat::number_of_executed_units|stat::peak_rss_mb|Done [0-9]+ runs" ".build-fuzz/$t.log" || true
done
exit $status
