#!/usr/bin/env bash
# One call on the GPU machine: install the checkout, GPU test tier, parity against the upstream
# fixture, the inference latency suite, the benchmark suite. Under 6 minutes; results in OUTDIR (flat, at
# most 10 files): run.log (nvidia-smi, install, bench progress), tests.log, parity.log,
#   latency.json, latency.md, latency.png, results.json, results.md, speedup.png, memory.png
# Prints the markdown table last.
#
# usage: bash benchmarks/gpu_check.sh [OUTDIR]     (default: $OUT if set, else benchmarks/results/<date>)
# env:   DMD_FAST_FIXTURE  parity fixture (default .gpu_carry/upstream_dmd_mosei_aligned.pt)
#        GPU_CHECK_SECONDS total wall budget (default 330)
#        BENCH_SUITE       attention | graph_distill | model | all (op, gd: earlier names) (default all)
#        BENCH_ARGS        extra arguments for the bench command (e.g. "--quick" for a CPU dry run)
#        SKIP_INSTALL=1    use the current environment as it is
#        SKIP_LATENCY=1    skip the latency suite; LATENCY_SECONDS (default 100), LATENCY_PROVIDERS, LATENCY_ARGS
#                          (e.g. "--quick") tune it
#        PYTHON            interpreter (default python3)
set -uo pipefail
START=$(date +%s)
TOTAL=${GPU_CHECK_SECONDS:-330}
cd "$(dirname "$0")/.."
ROOT=$PWD
OUTDIR=${1:-${OUT:-benchmarks/results/$(date -u +%Y%m%d)}}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
LOG=$OUTDIR/run.log
PY=${PYTHON:-python3}
export DMD_FAST_FIXTURE=${DMD_FAST_FIXTURE:-$ROOT/.gpu_carry/upstream_dmd_mosei_aligned.pt}
export PYTHONUNBUFFERED=1
: > "$LOG"

left() { echo $(( TOTAL - ($(date +%s) - START) )); }
# cap WANT: WANT seconds, or what is left of the budget minus a reserve, at least 5
cap() { local l=$(( $(left) - ${2:-10} )); if (( l < $1 )); then echo $(( l > 5 ? l : 5 )); else echo "$1"; fi; }
say() { echo "== [$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }

say "gpu_check in $ROOT -> $OUTDIR"
{ nvidia-smi || echo "nvidia-smi failed (rc $?)"; } >> "$LOG" 2>&1
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,power.draw,clocks.sm,clocks.max.sm \
    --format=csv 2>&1 | tee -a "$LOG"

# --- install: editable, no downloads; fall back to a path shim for dmd_fast.kernels -------------------------
say "install"
INSTALL=ok
if [ "${SKIP_INSTALL:-0}" = 1 ]; then
    INSTALL="skipped (SKIP_INSTALL=1)"
elif ! $PY -m pip install --no-index --no-deps --no-build-isolation -e . >> "$LOG" 2>&1; then
    INSTALL="pip failed; using a sitecustomize shim"
    SHIM=$(mktemp -d)
    cat > "$SHIM/sitecustomize.py" <<EOF
# dmd_fast without installation: the repo root on sys.path, kernels/ importable as dmd_fast.kernels
import importlib.util, os, sys
_ROOT = "$ROOT"
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
class _KernelsFinder:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "dmd_fast.kernels" or name.startswith("dmd_fast.kernels."):
            rel = name.split(".")[2:]
            base = os.path.join(_ROOT, "kernels", *rel)
            if os.path.isdir(base):
                return importlib.util.spec_from_file_location(name, os.path.join(base, "__init__.py"),
                                                              submodule_search_locations=[base])
            if os.path.exists(base + ".py"):
                return importlib.util.spec_from_file_location(name, base + ".py")
        return None
sys.meta_path.insert(0, _KernelsFinder)
EOF
    export PYTHONPATH="$SHIM:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
$PY -c "import torch, triton, dmd_fast, dmd_fast.kernels; print('torch', torch.__version__, '| triton', triton.__version__, '| cuda', torch.version.cuda, '| device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NONE')" 2>&1 | tee -a "$LOG"
say "install: $INSTALL"

# --- parity against the upstream fixture (Triton backend on CUDA) ---------------------------------------------
say "parity (fixture $DMD_FAST_FIXTURE)"
if [ -f "$DMD_FAST_FIXTURE" ]; then
    timeout -k 5 "$(cap 60 200)" $PY -m dmd_fast.cli parity --backend triton --device cuda \
        --fixture "$DMD_FAST_FIXTURE" > "$OUTDIR/parity.log" 2>&1
    PARITY_RC=$?
else
    echo "parity fixture not found at $DMD_FAST_FIXTURE (set DMD_FAST_FIXTURE)" > "$OUTDIR/parity.log"
    PARITY_RC=3
fi
tail -n 25 "$OUTDIR/parity.log"
say "parity rc $PARITY_RC"

# --- GPU test tier ----------------------------------------------------------------------------------------------
say "GPU tests"
# files with GPU-tier tests, newest / least-verified first so a cut-off loses the well-trodden sweeps
# (tests/test_bench_lib.py checks that every file with a GPU test is listed here)
GPU_TEST_FILES="tests/test_linear_grouped.py tests/test_loss_terms.py tests/test_margin_loss.py tests/test_encoder_in_proj.py tests/test_graphed_step.py tests/test_graph_distill.py tests/test_convergence.py tests/test_attention.py"
# shellcheck disable=SC2086
timeout -k 10 "$(cap 150 140)" $PY -m pytest -q $GPU_TEST_FILES -m gpu -p no:cacheprovider \
    --durations=15 > "$OUTDIR/tests.log" 2>&1
TESTS_RC=$?
if [ "$TESTS_RC" -eq 5 ]; then echo "(no test selected by -m gpu)" >> "$OUTDIR/tests.log"; TESTS_RC=0; fi
tail -n 15 "$OUTDIR/tests.log"
say "tests rc $TESTS_RC"

# --- inference latency (batch-1 first; cheapest providers first; latency.json rewritten per row) ------------------
if [ "${SKIP_LATENCY:-0}" != 1 ]; then
    LAT_S=$(cap "${LATENCY_SECONDS:-100}" 120)
    say "latency suite (hard cap ${LAT_S}s, time budget $(( LAT_S * 2 / 3 ))s)"
    # shellcheck disable=SC2086
    timeout -k 10 "$LAT_S" $PY -m dmd_fast.bench.cli --suite latency --out "$OUTDIR" \
        --backend-list "${LATENCY_PROVIDERS:-ref_eager,ours_cudagraph,ours_eager,ref_compile_ro,exported,ref_compile}" \
        --time-budget $(( LAT_S * 2 / 3 )) ${LATENCY_ARGS:-} >> "$LOG" 2>&1
    LAT_RC=$?
    say "latency rc $LAT_RC"
fi

# --- benchmarks: everything that fits in what is left --------------------------------------------------------
BENCH_S=$(( $(left) - 15 ))
(( BENCH_S < 30 )) && BENCH_S=30
BUDGET=$(( BENCH_S * 3 / 4 ))
say "bench (hard cap ${BENCH_S}s, time budget ${BUDGET}s)"
# shellcheck disable=SC2086
timeout -k 10 "$BENCH_S" $PY -m dmd_fast.bench.cli --suite "${BENCH_SUITE:-all}" --out "$OUTDIR" \
    --time-budget "$BUDGET" ${BENCH_ARGS:-} >> "$LOG" 2>&1
BENCH_RC=$?
rm -f "$OUTDIR"/*.tmp
if [ "$BENCH_RC" -ne 0 ] && [ -f "$OUTDIR/results.json" ]; then
    say "bench rc $BENCH_RC: re-rendering the report from results.json"
    $PY -m dmd_fast.bench.report "$OUTDIR" > /dev/null 2>> "$LOG"
fi
say "bench rc $BENCH_RC"

say "summary: install [$INSTALL] parity rc $PARITY_RC, tests rc $TESTS_RC, latency rc ${LAT_RC:-skipped}, bench rc $BENCH_RC; files:"
ls -la "$OUTDIR" | tee -a "$LOG"
echo
# compact tables last (full tables with p20/p80 and notes: results.md)
if [ -f "$OUTDIR/results.json" ]; then
    $PY -m dmd_fast.bench.report "$OUTDIR" --compact --print-only 2>&1 || cat "$OUTDIR/results.md"
else
    echo "no results.json (see run.log)"
fi
for rc in $TESTS_RC $PARITY_RC ${LAT_RC:-0} $BENCH_RC; do [ "$rc" -ne 0 ] && exit "$rc"; done
exit 0
