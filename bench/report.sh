#!/usr/bin/env bash
# bench/report.sh — the body of `make bench-report` (which builds and
# writes the models first). Runs the Go benchmarks and the mcpctl bench
# scenarios, then writes bench/reports/YYYY-MM-DD.md (+ the latency
# histogram PNG). On a shared machine run it under the heavy lock:
#   flock /work/heavy.lock make bench-report
# Bounded: about 11 minutes on 2 cores (10 min 49 s on 2026-12-05) (COUNT runs of each Go benchmark,
# SCENARIO_TIME per mcpctl scenario).
set -euo pipefail
GO=${GO:-go}
BIN=${BIN:-bin}
MODEL=${MODEL:-testdata/models/bench-135m-q8_0.gguf}
THREADS=${THREADS:-2}
COUNT=${COUNT:-3}
# Devices of the udp scenario: issue 14's 8-device targets (aggregate ÷ the
# single scenario's, TTFT p99 ÷ its p50: mcpctl's markdown prints both).
DEVICES=${DEVICES:-8}
SCENARIO_TIME=${SCENARIO_TIME:-20s}
CHAT_TIME=${CHAT_TIME:-120s}  # the warm-up conversation of 10 turns without KV reuse takes tens of seconds
OUT=${OUT:-bench/reports}
date=$(date -u +%F)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$OUT"

run() { echo "== $*" >&2; "$@"; }

# Go benchmarks: each comparison's baseline runs in the same invocation.
run $GO test -run '^$' -bench '^(BenchmarkUDPEchoBaseline|BenchmarkDaemonPing|BenchmarkDaemonRequest|BenchmarkDaemonStream)$' \
  -benchmem -count "$COUNT" ./daemon/ | tee "$tmp/daemon.txt" >&2
run $GO test -run '^$' -bench '^BenchmarkObserverOverhead$' -benchmem -count "$COUNT" ./daemon/telemetry/ | tee "$tmp/observer.txt" >&2
MCPD_BENCH_MODEL=$(realpath "$MODEL") MCPD_BENCH_THREADS=$THREADS \
  run $GO test -run '^$' -bench '^(BenchmarkNativePath|BenchmarkRepeatCached)$' -benchtime 5x -count "$COUNT" ./bench/ | tee "$tmp/paths.txt" >&2
run $GO test -run '^$' -bench '^BenchmarkOllamaPath(Paced)?$' -count "$COUNT" ./bench/ | tee -a "$tmp/paths.txt" >&2
# The Ollama engine's warm-up against a fake Ollama whose model load is
# modelled (2.4 s): the first request's first token with and without it,
# alternating; and whether a chat's requests keep a stable prefix (~10 s).
run $GO test -run '^$' -bench '^BenchmarkOllamaWarmUp$' -benchtime 2x -count 1 ./bench/ | tee -a "$tmp/paths.txt" >&2
# The engine against the C harness and the memory system (rounds interleaved inside).
MCPD_BENCH_MODEL=$(realpath "$MODEL") MCPD_BENCH_THREADS=$THREADS \
  run $GO test -run '^$' -bench '^BenchmarkNativeVsHarness$' -benchtime 12x -count "$COUNT" ./backends/llamacpp/ | tee -a "$tmp/paths.txt" >&2
# Eight streams against their ceiling: the engine's batching vs the C
# harness decoding 8 sequences per step, and that vs one (rounds interleaved).
MCPD_BENCH_MODEL=$(realpath "$MODEL") MCPD_BENCH_THREADS=$THREADS \
  run $GO test -run '^$' -bench '^BenchmarkParallelVsHarness$' -benchtime 6x -count "$COUNT" ./backends/llamacpp/ | tee -a "$tmp/paths.txt" >&2
# Eight callers' first tokens against one caller's and the harness's steps
# of 1 and 8 sequences, first tokens first vs merged (issue 14, ~40 s).
MCPD_BENCH_MODEL=$(realpath "$MODEL") MCPD_BENCH_THREADS=$THREADS \
  run $GO test -run '^$' -bench '^BenchmarkTTFTVsHarness$' -benchtime 3x -count 1 ./backends/llamacpp/ | tee -a "$tmp/paths.txt" >&2

# Caching (issue 16): a second device's shared system prompt, and an old
# conversation's first turn after a restart, warm file vs none (interleaved).
MCPD_BENCH_MODEL=$(realpath "$MODEL") MCPD_BENCH_THREADS=$THREADS \
  run $GO test -run '^$' -bench '^(BenchmarkSharedPrefix|BenchmarkWarmRestart)$' -benchtime 6x -count 1 ./backends/llamacpp/ | tee -a "$tmp/paths.txt" >&2
# A device's conversation resumed after a restart (RESUME), warm file vs
# conversations only, and how long a warm save holds the engine.
MCPD_BENCH_MODEL=$(realpath "$MODEL") MCPD_BENCH_THREADS=$THREADS \
  run $GO test -run '^$' -bench '^BenchmarkResumeRestart$' -benchtime 5x -count 1 ./bench/ | tee -a "$tmp/paths.txt" >&2
MCPD_BENCH_MODEL=$(realpath "$MODEL") MCPD_BENCH_THREADS=$THREADS \
  run $GO test -run '^$' -bench '^BenchmarkWarmSaveHold$' -benchtime 5x -count 1 ./backends/llamacpp/ | tee -a "$tmp/paths.txt" >&2
# The chat scenario (10 turns): time to first token by turn, KV reuse on and off.
for mode in on off; do
  flags=()
  if [ "$mode" = off ]; then flags=(--mcpd-flag=--no-kv-reuse); fi
  run "$BIN/mcpctl" bench --mcpd "$BIN/mcpd" --model "$MODEL" --threads "$THREADS" --scenario chat --turns 10 \
    --max-tokens 16 --duration "$CHAT_TIME" "${flags[@]}" --markdown "$tmp/chat-$mode.md" >&2
done

# What devices see: the three scenarios against a spawned mcpd.
run "$BIN/mcpctl" bench --mcpd "$BIN/mcpd" --model "$MODEL" --threads "$THREADS" \
  --duration "$SCENARIO_TIME" --devices "$DEVICES" --warmup 1 \
  --json-out "$tmp/mcpctl.json" --markdown "$tmp/mcpctl.md" --png "$OUT/$date-latency.png" >&2
cp "$tmp/mcpctl.json" "$OUT/$date.json"

{
  echo "Machine: $(nproc) CPU cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(uname -sr)."
  echo "Commit: $(git describe --always --dirty 2>/dev/null || echo unknown). Model: \`$MODEL\` ($(du -h "$MODEL" | cut -f1)), $THREADS threads."
  echo "Go benchmarks: $COUNT runs each; mcpctl scenarios: $SCENARIO_TIME each after warm-up. Raw figures: \`$date.json\`."
} >"$tmp/header.md"
$GO run ./bench/mkreport -date "$date" -header "$tmp/header.md" -mcpctl "$tmp/mcpctl.md" \
  -chat-on "$tmp/chat-on.md" -chat-off "$tmp/chat-off.md" \
  "$tmp/daemon.txt" "$tmp/observer.txt" "$tmp/paths.txt" >"$OUT/$date.md"
echo "wrote $OUT/$date.md" >&2
