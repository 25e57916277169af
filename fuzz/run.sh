#!/usr/bin/env bash
# Build one fuzz target with libFuzzer on the stable toolchain and run it.
#
#   fuzz/run.sh TARGET [--execs N | --seconds S] [--jobs J] [-- LIBFUZZER-ARGS...]
#
# TARGET is wire, client or server. Without a limit it runs 1,000,000
# executions. New inputs go to fuzz/out/TARGET/corpus (the committed
# fuzz/corpus/TARGET is read, never written); crashes, hangs and inputs
# over the allocation caps go to fuzz/out/TARGET/artifacts. At the end it
# prints executions, exec/s, coverage, crashes, hangs, duration and CPU.
# --jobs J runs J processes at once (libFuzzer -fork=J); figures are then
# the sum over them.
#
# Minimising a corpus into the committed one:
#   fuzz/run.sh TARGET --merge   (keeps the inputs that add coverage)
set -euo pipefail
# The whole script is one function, read before it runs: editing this file
# while a run goes on cannot change what that run does next.
main() {
cd "$(dirname "$0")"

target=${1:?usage: fuzz/run.sh wire|client|server [--execs N | --seconds S] [--jobs J] [--merge]}
shift
case $target in wire|client|server) ;; *) echo "unknown target $target" >&2; exit 2 ;; esac
runs=1000000 seconds=0 jobs=0 merge=0
extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --execs) runs=$2; seconds=0; shift 2 ;;
    --seconds) seconds=$2; runs=0; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --merge) merge=1; shift ;;
    --) shift; extra=("$@"); break ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

triple=$(rustc -vV | sed -n 's/^host: //p')
# libFuzzer's coverage instrumentation, with no -Z flag: these are the
# LLVM passes cargo-fuzz asks for. --target keeps them off build scripts
# and proc macros, which are not linked with libFuzzer.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
cargo build --release --quiet --target "$triple" --bin "$target"
bin=target/$triple/release/$target

out=out/$target
mkdir -p "$out/corpus" "$out/artifacts" corpus/"$target"
# The scratch directories of the targets go to memory when it can.
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then export TMPDIR=/dev/shm; fi

if [ $merge = 1 ]; then
  # Rebuild the committed corpus from itself and everything found since.
  rm -rf "$out/merged"; mkdir -p "$out/merged"
  "$bin" -merge=1 -timeout=10 -rss_limit_mb=2048 "$out/merged" corpus/"$target" seeds/"$target" "$out/corpus" \
    "${extra[@]}" 2>&1 | grep -v "^barge-helper: " | tail -3
  rm -rf corpus/"$target"; mv "$out/merged" corpus/"$target"
  echo "corpus/$target: $(ls corpus/"$target" | wc -l) files, $(du -sh corpus/"$target" | cut -f1)"
  exit 0
fi

args=(-timeout=10 -rss_limit_mb=2048 -max_len=262144 -print_final_stats=1
      -artifact_prefix="$out/artifacts/")
[ "$runs" != 0 ] && args+=(-runs="$runs")
[ "$seconds" != 0 ] && args+=(-max_total_time="$seconds")
[ "$jobs" != 0 ] && args+=(-fork="$jobs" -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
log=$out/last-run.log
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- .. 2>/dev/null || echo ' (with local changes)')"
start=$(date +%s)
set +e
# The helper logs every failed request to stderr ("barge-helper: ...");
# the log keeps everything else.
"$bin" "${args[@]}" "${extra[@]}" "$out/corpus" corpus/"$target" 2>&1 >/dev/null \
  | grep -v '^barge-helper: ' >"$log"
status=${PIPESTATUS[0]}
set -e
end=$(date +%s)

# libFuzzer's final stats, and its last status line for coverage.
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
if [ -z "$execs" ]; then  # -fork mode prints no final stats
  execs=$(grep -oE '#[0-9]+' "$log" | tail -1 | tr -d '#')
  rate=$(( ${execs:-0} / ( end - start > 0 ? end - start : 1 ) ))
fi
last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
cov=$(echo "$last" | grep -oE 'cov: [0-9]+' | grep -oE '[0-9]+' || true)
ft=$(echo "$last" | grep -oE 'ft: [0-9]+' | grep -oE '[0-9]+' || true)
crashes=$(ls "$out/artifacts" | grep -cE '^(crash|oom)-' || true)
hangs=$(ls "$out/artifacts" | grep -cE '^(timeout|slow-unit)-' || true)
overcap=$(grep -c 'ALLOCATION OVER CAP' "$log" || true)
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
echo "target:       $target"
echo "commit:       $commit (when the run started)"
echo "date:         $(date -u +%Y-%m-%dT%H:%MZ)"
echo "executions:   ${execs:-?}"
echo "exec/s:       ${rate:-?}"
echo "coverage:     ${cov:-?} edges, ${ft:-?} features"
echo "crashes:      $crashes (artifacts in fuzz/$out/artifacts; allocations over the caps: $overcap)"
echo "hangs:        $hangs (-timeout=10 s)"
echo "duration:     $((end - start)) s"
echo "cpu:          $cpu, $(nproc) cores"
echo "log:          fuzz/$log (libFuzzer exit $status)"
[ "$crashes" = 0 ] && [ "$hangs" = 0 ] && [ "$status" = 0 ]
}
main "$@"
