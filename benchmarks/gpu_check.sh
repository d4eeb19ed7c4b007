#!/usr/bin/env bash
# pyro-vae's CUDA path end to end, as ONE prepared command: a GPU session's first and only call.
#
#   bash benchmarks/gpu_check.sh                  # on the GPU machine (README: the device call)
#   bash benchmarks/gpu_check.sh --dry-run        # every stage on this CPU, tiny sizes (~4 min)
#   bash benchmarks/gpu_check.sh --dry-run --stages train,sample   # install and import, then these
#   bash benchmarks/gpu_check.sh --tree-hash      # the tree's hash, which the log's 2nd line gives
#
# Before: bash benchmarks/gpu_wheels.sh (here, where PyPI answers) fills the ignored .whl/ with
# the wheels the CUDA image lacks and MNIST gzipped; the device call carries [".whl"].
#
# Stages, each under its own `timeout` (budgets below; printed at the start) with a START and
# an END line stamped in seconds since the script began, the END with the exit status (124:
# timed out; SIGABRT then makes every Python thread print where it was):
#   install         the wheels into $SITE with pip --target, the tree's pyro_vae/, models/ and
#                   guides/ copied there as pyro_vae, pyro_vae.models, pyro_vae.guides (what
#                   setuptools' package-dir does; the tree itself, so never a stale build),
#                   MNIST unpacked from $MNIST_GZ and checked against its SHA-256 sums
#   import          `import torch, pyro, arviz, pyro_vae` alone, each timed, with versions,
#                   where each came from and torch.cuda.is_available() (no GPU: stop here)
#   train           pyro-vae train --device cuda: MNIST when it was sent, else the digits
#   evaluate-iwae   pyro-vae evaluate: prior MC, ELBO, IWAE with PSIS
#   evaluate-ais    pyro-vae evaluate --method ais with a small T, and --bdmc
#   diagnose        pyro-vae diagnose, small --points: NUTS runs on the GPU (the run is loaded
#                   onto --device; Pyro's NUTS evaluates the potential and its gradient there,
#                   its trees are built by Python on the host); the stage prints NUTS's seconds
#   sample          pyro-vae sample
#   assertions      benchmarks/gpu_check.py: everything resident, no host copies per step,
#                   scalar reads per step by line, NUTS draws on the device, evaluate there
#   bench           benchmarks/bench_train.py --device cuda --quick: the step and epoch tables
#                   (floor, fit:elbo, fit:elbo-jit, fp32-medium, bf16)
#   bench-compiled  the same step table with fit:elbo-compile (compiling falls in its warm-up)
# A failed install or import ends the script; a failed train skips the stages that read its
# run; any other failure is reported and the next stage runs. The whole script stops at
# $GPU_CHECK_TOTAL seconds (480 on the GPU: each stage's timeout is cut to what is left).
# Exit status: 0 when every stage that ran passed, 1 otherwise.
#
# Everything printed goes to the terminal and to ${OUT:-/tmp/gpu_check}/log.txt as it is
# printed, so a stage that hangs still reports how far it got; $OUT also gets the run's
# summary.json, both evaluation.json, diagnostics.json and samples.png (6 files: the device
# tool brings back 8). Scratch (the install folder, runs, MNIST) goes to a fresh folder under
# /tmp, removed at the end unless GPU_CHECK_KEEP=1.
#
# Settings (environment):
#   PY       the interpreter that holds the image's torch, by its path (default: python3 on
#            PATH). On the nvidia-h200 image that is /opt/torch/.venv/bin/python3 (KINDS.md);
#            `command -v python3` and `python3 -c 'import sys; print(sys.executable)'` there show
#            it. Call it by that path or by PATH: a symlink of your own to it (or its realpath)
#            can lose the image's virtual environment, as it did in the first session lent a GPU.
#   WHL      the wheel folder (default: .whl in the repository); MNIST_GZ its MNIST (WHL/mnist)
#   OUT      where log.txt and the result files go (default /tmp/gpu_check; the device tool
#            sets it)
#   GPU_CHECK_BUDGETS  per-stage timeouts in seconds that replace the table's, "train=80,bench=60"
#   GPU_CHECK_TOTAL    the whole script's seconds (480 on the GPU, 1200 for --dry-run)
#   GPU_CHECK_KEEP=1   keep the scratch folder
#   GPU_CHECK_SIZES=gpu  with --dry-run: the GPU's sizes and data (MNIST when sent) on the CPU,
#                    to try every flag and size the GPU call will pass (slow; raise the budgets)
#
# The CPU rehearsal (--dry-run): device cpu, 1 epoch of digits, tiny K, T and NUTS sizes,
# gpu_check.py --device cpu --quick (residency on the CPU; the scalar-read table; copies can
# only be 0 there), bench_train on digits with 1 repeat, so that the GPU call is the check's
# first GPU run, not its first run. Differences from the GPU run that it cannot rehearse:
# Python 3.11 here against 3.12 there (the wheels are pure Python, the same files; for
# gpu_wheels.sh --python-version 3.11); torch itself is not among the wheels (the image has
# it), so here it comes from whatever PY sees: run the rehearsal with the project venv's
# python as PY, or a fresh `python3 -m venv` with PYTHONPATH naming a folder of the image's
# other packages (the script puts $SITE before it); numba is on the image and not here
# (arviz imports it when it is installed: tried once, it cost 0.3 s); and on a CPU nothing is
# copied between host and device, so the copy counts are 0 by construction.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 MPLBACKEND=Agg
ulimit -c 0  # SIGABRT from a timeout: tracebacks, no core files
cd "$(dirname "$0")/.." || exit 2
REPO=$PWD

tree_hash() {  # what ran: the SHA-256 of the tree's .py and .sh files
    find pyro_vae models guides benchmarks \( -name '*.py' -o -name '*.sh' \) -print0 \
        | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-12
}

MODE=gpu
STAGES_ASKED=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) MODE=dry; shift ;;
        --stages) STAGES_ASKED=$2; shift 2 ;;
        --tree-hash) tree_hash; exit 0 ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

# name, GPU budget (s), dry-run budget (s)
STAGE_TABLE="install 25 60
import 45 60
train 50 90
evaluate-iwae 25 60
evaluate-ais 40 90
diagnose 50 120
sample 20 60
assertions 50 120
bench 70 180
bench-compiled 90 240"
ALL_STAGES=$(echo "$STAGE_TABLE" | awk '{print $1}' | tr '\n' ' ')
NEEDS_RUN=" evaluate-iwae evaluate-ais diagnose sample "
if [ -n "$STAGES_ASKED" ]; then
    for s in ${STAGES_ASKED//,/ }; do
        case " $ALL_STAGES " in *" $s "*) ;; *)
            echo "gpu_check.sh: unknown stage $s (stages: $ALL_STAGES)" >&2; exit 2 ;; esac
    done
fi

PY=${PY:-python3}
PY_PATH=$(command -v "$PY") || { echo "gpu_check.sh: no interpreter $PY (set PY)" >&2; exit 2; }
PY=$PY_PATH  # by the path PATH gives, never its realpath (that can leave the image's venv)
OUT=${OUT:-/tmp/gpu_check}
WHL=${WHL:-$REPO/.whl}
MNIST_GZ=${MNIST_GZ:-$WHL/mnist}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_work.XXXXXX")
[ "${GPU_CHECK_KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM PIPE
SITE=$WORK/site
mkdir -p "$OUT" "$SITE"
LOG=$OUT/log.txt
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!

if [ "$MODE" = gpu ]; then
    DEV=cuda TOTAL=${GPU_CHECK_TOTAL:-480} COL=2 SIZES=gpu
else
    DEV=cpu TOTAL=${GPU_CHECK_TOTAL:-1200} COL=3 SIZES=${GPU_CHECK_SIZES:-tiny}
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # a shared CPU: one thread per process
fi
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
T0=$(date +%s%N)
elapsed_ms() { echo $(( ($(date +%s%N) - T0) / 1000000 )); }
stamp() { local ms; ms=$(elapsed_ms); printf '[%4d.%d s]' $((ms / 1000)) $((ms % 1000 / 100)); }

budget_of() {  # GPU_CHECK_BUDGETS="train=80,bench=60" overrides the table
    local over
    over=$(echo ",${GPU_CHECK_BUDGETS:-}," | grep -o ",$1=[0-9]*," | tr -dc '0-9')
    [ -n "$over" ] && echo "$over" && return
    echo "$STAGE_TABLE" | awk -v s="$1" -v c="$COL" '$1 == s {print $c}'
}
selected() {  # install and import always run; a stage that reads the run brings train along
    local s
    [ -z "$STAGES_ASKED" ] && return 0
    case "$1" in install|import) return 0 ;; esac
    case ",$STAGES_ASKED," in *",$1,"*) return 0 ;; esac
    if [ "$1" = train ]; then
        for s in $NEEDS_RUN; do case ",$STAGES_ASKED," in *",$s,"*) return 0 ;; esac; done
    fi
    return 1
}

declare -A STATUS SECONDS_OF
FAILED=0
STOP=""
# run_stage NAME CMD...: CMD under the stage's timeout, with START and END lines.
run_stage() {
    local name=$1; shift
    local budget left t start ms rc
    budget=$(budget_of "$name")
    if [ -n "$STOP" ]; then
        echo "$(stamp) SKIP  $name: $STOP"; STATUS[$name]="skipped"; return 1
    fi
    left=$(( TOTAL - $(elapsed_ms) / 1000 - 5 ))
    t=$(( budget < left ? budget : left ))
    if [ "$t" -lt 10 ]; then
        echo "$(stamp) SKIP  $name: ${left} s left of the script's $TOTAL s"
        STATUS[$name]="skipped (no time)"; FAILED=1; return 1
    fi
    echo "$(stamp) START $name (timeout $t s): $*"
    start=$(elapsed_ms)
    timeout -s ABRT -k 10 "$t" "$@"
    rc=$?
    ms=$(( $(elapsed_ms) - start ))
    SECONDS_OF[$name]=$(printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)))
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        echo "$(stamp) END   $name: status $rc (timed out after $t s) in ${SECONDS_OF[$name]} s"
    else
        echo "$(stamp) END   $name: status $rc in ${SECONDS_OF[$name]} s"
    fi
    STATUS[$name]=$rc
    [ "$rc" = 0 ] || FAILED=1
    return "$rc"
}

finish() {
    local s
    echo
    echo "summary ($MODE, device $DEV, $(( $(elapsed_ms) / 1000 )) s of the script's $TOTAL s):"
    printf '  %-16s %-18s %9s %8s\n' stage status seconds budget
    for s in $ALL_STAGES; do
        selected "$s" || continue
        printf '  %-16s %-18s %9s %8s\n' "$s" "${STATUS[$s]:-not run}" "${SECONDS_OF[$s]:--}" \
            "$(budget_of "$s")"
    done
    echo "log: $LOG"
    [ "${GPU_CHECK_KEEP:-0}" = 1 ] && echo "scratch kept: $WORK"
    exec 1>&- 2>&-
    wait "$TEE_PID"
    exit "$FAILED"
}

# ---------------------------------------------------------------- the plan

echo "gpu_check.sh --$MODE: device $DEV, $SIZES sizes; $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')" \
     "$(git -C "$REPO" status --porcelain 2>/dev/null | grep -q . && echo '(tree differs from HEAD)')"
echo "tree $(tree_hash) (--tree-hash prints it for the tree you sent)"
echo "PY=$PY; wheels $WHL: $(sed -n '1s/.*for \(CPython [^;]*\);.*total \(.*\)$/\1, \2/p' \
    "$WHL/MANIFEST" 2>/dev/null || true)"
echo "scratch $WORK; log $LOG"
if [ "$MODE" = gpu ] && command -v nvidia-smi >/dev/null; then
    timeout 15 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
echo "budget per stage (timeout, s), $TOTAL s in all:"
for s in $ALL_STAGES; do
    selected "$s" && printf '  %-16s %4s\n' "$s" "$(budget_of "$s")"
done

DATA=digits
ROOT=$WORK/data
RUN=$WORK/runs/check
# ---------------------------------------------------------------- install

install() {
    set -e
    if compgen -G "$WHL/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" "$WHL"/*.whl
        ls "$WHL"/*.whl | sed 's|.*/|  installed |'
    elif [ "$MODE" = gpu ]; then
        echo "no wheels in $WHL: run bash benchmarks/gpu_wheels.sh here first, carry [\".whl\"]"
        return 1
    else
        echo "no wheels in $WHL: pyro, arviz and their needs come from $PY's own packages"
    fi
    cp -R "$REPO/pyro_vae" "$SITE/pyro_vae"
    cp -R "$REPO/models" "$SITE/pyro_vae/models"
    cp -R "$REPO/guides" "$SITE/pyro_vae/guides"
    find "$SITE/pyro_vae" -name __pycache__ -prune -exec rm -rf {} +
    echo "  the tree's pyro_vae, models, guides copied to $SITE/pyro_vae"
    if [ -e "$MNIST_GZ/train-images-idx3-ubyte.gz" ]; then
        mkdir -p "$ROOT/MNIST/raw"
        for f in "$MNIST_GZ"/*.gz; do
            gunzip -c "$f" >"$ROOT/MNIST/raw/$(basename "$f" .gz)"
        done
        (cd "$ROOT/MNIST/raw" && sha256sum --quiet -c "$MNIST_GZ/SHA256SUMS")
        echo "  MNIST unpacked into $ROOT/MNIST/raw, SHA-256 sums match"
    else
        echo "  no MNIST at $MNIST_GZ: the stages train on the bundled digits"
    fi
}
export -f install
export PY SITE WHL MODE REPO ROOT MNIST_GZ
run_stage install bash -c install || STOP="the install failed"
if [ "$SIZES" = gpu ] && [ -e "$ROOT/MNIST/raw/train-images-idx3-ubyte" ]; then
    DATA=mnist
fi

# The sizes: the GPU's, or the rehearsal's tiny ones. GPU_CHECK_SIZES=gpu with --dry-run runs
# the GPU's sizes (and data) on the CPU, to try every flag the GPU call will pass (slow).
if [ "$SIZES" = gpu ]; then
    TRAIN=(--epochs 2 --batch-size 256 --latent-dim 50 --hidden 400)
    # the digits' test split has 180 images (MNIST's 10,000)
    IWAE=(--samples 1000 --points "$([ "$DATA" = mnist ] && echo 512 || echo 128)")
    AIS=(--method ais --steps 100 --chains 8 --warmup-steps 20 --points 64 --samples 200 --bdmc 8)
    DIAG=(--points 4 --chains 2 --warmup 50 --samples 50 --local-steps 100 --elbo-samples 500)
    ASSERT=()
    BENCH=(--quick --skip memory --precisions fp32-medium bf16)
    BENCH_COMPILED=(--quick --batch-sizes 256 --skip epochs memory --compiled)
else
    TRAIN=(--epochs 1 --batch-size 256 --latent-dim 2 --hidden 32)
    IWAE=(--samples 20 --points 16)
    AIS=(--method ais --steps 8 --chains 2 --warmup-steps 4 --leapfrog 2 --points 4 --samples 10
         --bdmc 2)
    DIAG=(--points 2 --chains 2 --warmup 10 --samples 10 --local-steps 10 --elbo-samples 20)
    ASSERT=(--quick)
    # --quick's sizes with 1 repeat (--quick itself sets 3 repeats)
    BENCH=(--repeats 1 --epoch-repeats 1 --steps 5 --batch-sizes 32 --skip memory
           --precisions fp32-medium bf16 --no-numpyro --no-pin)
    BENCH_COMPILED=(--repeats 1 --steps 5 --batch-sizes 32 --skip epochs memory --compiled
                    --no-numpyro --no-pin)
fi

cd "$WORK" || exit 2  # not the repository: its pyro_vae/ would hide the installed one

# ---------------------------------------------------------------- import

cat >"$WORK/imports.py" <<'EOF'
import os, sys, time
print(f"python {sys.version.split()[0]} at {sys.executable} (prefix {sys.prefix})")
site, gpu, mods = os.environ["SITE"], os.environ["MODE"] == "gpu", {}
for name in ("torch", "pyro", "arviz", "pyro_vae"):
    print(f"  import {name} ...", end=" ")
    t = time.perf_counter()
    m = mods[name] = __import__(name)
    version = getattr(m, "__version__", None)
    print(f"{time.perf_counter() - t:.1f} s{', ' + version if version else ''}, "
          f"from {os.path.dirname(m.__file__)}")
import pyro_vae.guides, pyro_vae.models  # noqa: E401
# On the GPU everything but torch comes from the wheels; pyro_vae always from the tree's copy.
for m in (mods["pyro"], mods["arviz"]) if gpu else ():
    assert m.__file__.startswith(site), f"{m.__name__} from {m.__file__}, not from {site}"
for m in (mods["pyro_vae"], pyro_vae.models, pyro_vae.guides):
    assert m.__file__.startswith(site), f"{m.__name__} from {m.__file__}, not from {site}"
torch = mods["torch"]
cuda = torch.cuda.is_available()
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), torch.cuda.is_available() = {cuda}"
      + (f": {torch.cuda.device_count()} x {torch.cuda.get_device_name()}" if cuda else ""))
if gpu and not cuda:
    sys.exit("no CUDA device: the GPU stages cannot run")
EOF
run_stage import "$PY" "$WORK/imports.py" || STOP="the import failed"
[ -z "$STOP" ] && timeout 20 "$PY" -m pip check 2>&1 | grep -i -E "pyro|arviz|h5netcdf|einstats|platformdirs" \
    | sed 's/^/  pip check: /'

# ---------------------------------------------------------------- the CLI

CLI=("$PY" -m pyro_vae)
DATA_ARGS=(--data "$DATA")
[ "$DATA" = mnist ] && DATA_ARGS+=(--data-root "$ROOT")
[ -z "$STOP" ] && echo "data: $DATA"
if selected train; then
    run_stage train "${CLI[@]}" train "${DATA_ARGS[@]}" --device "$DEV" "${TRAIN[@]}" \
        --out "$WORK/runs" --name check --no-progress \
        && cp "$RUN/summary.json" "$OUT/summary.json" || RUN_MISSING="no run: train did not pass"
fi
for stage in $NEEDS_RUN; do
    selected "$stage" || continue
    if [ -n "${RUN_MISSING:-}" ] && [ -z "$STOP" ]; then
        echo "$(stamp) SKIP  $stage: $RUN_MISSING"; STATUS[$stage]="skipped"; continue
    fi
    case "$stage" in
        evaluate-iwae)
            run_stage "$stage" "${CLI[@]}" evaluate "$RUN" --device "$DEV" "${IWAE[@]}" --no-progress \
                && cp "$RUN/evaluation.json" "$OUT/evaluation_iwae.json" ;;
        evaluate-ais)
            run_stage "$stage" "${CLI[@]}" evaluate "$RUN" --device "$DEV" "${AIS[@]}" --no-progress \
                && cp "$RUN/evaluation.json" "$OUT/evaluation_ais.json" ;;
        diagnose)
            if run_stage "$stage" "${CLI[@]}" diagnose "$RUN" --device "$DEV" "${DIAG[@]}" --no-progress; then
                cp "$RUN/diagnostics.json" "$OUT/diagnostics.json"
                "$PY" - "$RUN/diagnostics.json" "$DEV" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
c = d["config"]
print(f"  NUTS ran on {sys.argv[2]} (the run was loaded there): {d['seconds']['nuts']:.1f} s for "
      f"{len(d['points'])} points, {c['chains']} chains of {c['warmup']} + {c['samples']} "
      f"iterations; max r-hat {d['nuts']['rhat_max']:.3f}")
EOF
            fi ;;
        sample)
            run_stage "$stage" "${CLI[@]}" sample "$RUN" --device "$DEV" --n 64 --out "$WORK/samples.png" \
                && cp "$WORK/samples.png" "$OUT/samples.png" ;;
    esac
done

# ---------------------------------------------------------------- assertions and speed

BENCH_DATA=(--data "$DATA" --data-root "$ROOT")
selected assertions && run_stage assertions "$PY" "$REPO/benchmarks/gpu_check.py" --device "$DEV" \
    "${BENCH_DATA[@]}" "${ASSERT[@]}"
selected bench && run_stage bench "$PY" "$REPO/benchmarks/bench_train.py" --device "$DEV" \
    "${BENCH_DATA[@]}" "${BENCH[@]}"
selected bench-compiled && run_stage bench-compiled "$PY" "$REPO/benchmarks/bench_train.py" \
    --device "$DEV" "${BENCH_DATA[@]}" "${BENCH_COMPILED[@]}"
finish
