#!/usr/bin/env bash
# The GPU measurements of saat_jax in one script: training-step throughput against the PyTorch
# reference steps, SA-PGD's overhead, AutoAttack against pyautoattack, test-set PGD-20 time, and a
# 3-epoch PreAct ResNet-18 SAAT run on the JPEG CIFAR-10 (s/epoch). Every part writes JSON (and its
# log) under the results folder; a part that fails or runs out of time is recorded as such in
# suite.json and the next part runs.
#
#   bash benchmarks/gpu_suite.sh --dry-run                       # the plan, nothing run
#   bash benchmarks/gpu_suite.sh --wheels .bench_carry/wheels --data .bench_carry/cifar10-jpeg.tar.gz
#   bash benchmarks/gpu_suite.sh --parts train3,pgd20 --deadline-s 570 ...   # one device-tool call
#   bash benchmarks/gpu_suite.sh --smoke                         # every part, tiny, on a CPU (plumbing)
#
# benchmarks/README.md ("GPU suite") says how to run it with the device tool, in four calls of
# under 10 minutes each.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
ALL_PARTS="env,throughput_pr18,throughput_wrn,throughput_bf16,sa_pgd,train3,pgd20,autoattack"
PARTS="$ALL_PARTS"
DRY=0
SMOKE=0
WHEELS=""
DATA=""
RESULTS=""
WORK="${TMPDIR:-/tmp}/saat_gpu_suite"
DEADLINE=0   # seconds from the start after which no part may still run (0: none)

usage() {
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
  cat <<EOF

Options:
  --dry-run          print the plan (parts, commands, time limits, where results go) and exit
  --parts LIST       comma-separated subset of: $ALL_PARTS
  --wheels DIR       install DIR/*.whl (ml-collections, pyautoattack) with pip --no-index --no-deps
  --data FILE        the CIFAR-10 JPEG archive (default .bench_carry/cifar10-jpeg.tar.gz, else
                     ../shared/data/cifar10-jpeg.tar.gz)
  --results DIR      where JSON and logs go (default benchmarks/results/gpu_<UTC date>)
  --work DIR         scratch for runs and checkpoints (default \$TMPDIR/saat_gpu_suite)
  --deadline-s N     end every part by N seconds after the start (each part's limit is cut to fit);
                     with the device tool's 600 s per command, pass 570
  --smoke            tiny sizes, CPU allowed: checks the plumbing of every part, measures nothing
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --smoke) SMOKE=1 ;;
    --parts) PARTS="$2"; shift ;;
    --parts=*) PARTS="${1#*=}" ;;
    --wheels) WHEELS="$2"; shift ;;
    --wheels=*) WHEELS="${1#*=}" ;;
    --data) DATA="$2"; shift ;;
    --data=*) DATA="${1#*=}" ;;
    --results) RESULTS="$2"; shift ;;
    --results=*) RESULTS="${1#*=}" ;;
    --work) WORK="$2"; shift ;;
    --work=*) WORK="${1#*=}" ;;
    --deadline-s) DEADLINE="$2"; shift ;;
    --deadline-s=*) DEADLINE="${1#*=}" ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_suite.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done

for p in ${PARTS//,/ }; do
  case ",$ALL_PARTS," in
    *",$p,"*) ;;
    *) echo "gpu_suite.sh: unknown part '$p'; parts: $ALL_PARTS" >&2; exit 2 ;;
  esac
done
if [ -z "$DATA" ]; then
  if [ -f .bench_carry/cifar10-jpeg.tar.gz ]; then DATA=.bench_carry/cifar10-jpeg.tar.gz
  else DATA=../shared/data/cifar10-jpeg.tar.gz; fi
fi
if [ -z "$WHEELS" ] && [ -d .bench_carry/wheels ]; then WHEELS=.bench_carry/wheels; fi
DATE="$(date -u +%Y%m%d)"
if [ -z "$RESULTS" ]; then
  if [ "$SMOKE" = 1 ]; then RESULTS="$WORK/results_smoke_$DATE"; else RESULTS="benchmarks/results/gpu_$DATE"; fi
fi

# ---- the parts: name, time limit (s, H100 estimate of the work in brackets), command ------------
# Sizes: the issue's (PreAct ResNet-18 batch 128 and 512, WRN-34-10 batch 128, AA on 1,000 points,
# PGD-20 on 10k points, 3 epochs); --smoke shrinks every one of them.
if [ "$SMOKE" = 1 ]; then
  TT_PR18="--model small_cnn --batch 8 --warmup 1 --steps 1 --torch-threads 1"
  TT_WRN="--model small_cnn --batch 16 --methods saat --warmup 1 --steps 1 --torch-threads 1"
  TT_BF16="--model small_cnn --batch 8 --methods saat --dtype float32 bfloat16 --skip-torch --warmup 1 --steps 1"
  SAPGD="--model small_cnn --batch 8 --repeats 1"
  TRAIN3_EPOCHS=1
  TRAIN3="--config.model.name=small_cnn --config.data.num_train=128 --config.batch_size=32 --config.eval.num_test=100 --config.eval.train_subset=0"
  PGD20="--n 100 --batch-size 50"
  AA_TRAIN="--config.method=natural --config.num_epochs=1 --config.data.num_train=64 --config.batch_size=32 --config.eval.num_test=50 --config.eval.train_subset=0"
  AA="--n 8 --eps 8 --attacks apgd-ce --batch-size 8 --torch-threads 1"
else
  TT_PR18="--model preact_resnet18 --batch 128 512 --warmup 2 --steps 5"
  TT_WRN="--model wrn34_10 --batch 128 --warmup 2 --steps 5"
  TT_BF16="--model preact_resnet18 --batch 128 512 --methods natural saat --dtype float32 bfloat16 --skip-torch --warmup 2 --steps 5"
  SAPGD="--model preact_resnet18 --batch 128 --repeats 5"
  TRAIN3_EPOCHS=3
  TRAIN3=""
  PGD20="--n 10000 --batch-size 500"
  AA_TRAIN="--config.num_epochs=1 --config.eval.num_test=1000 --config.eval.train_subset=0"
  AA="--n 1000 --eps 8 --batch-size 500 --warm"
fi
CACHE="$WORK/cache"
TRAIN3_DIR="$WORK/train3"
AA_DIR="$WORK/aa_model"
LAUNCH_COMMON="--config.data.data_dir=$DATA --config.data.cache_dir=$CACHE --config.progress=False"

part_limit() {
  case "$1" in
    env) echo 120 ;;                # [20 s]
    throughput_pr18) echo 560 ;;    # [~6 min: 8 JAX compiles of 20-40 s, 2 x 4 methods x 7 steps each side]
    throughput_wrn) echo 480 ;;     # [~5 min: 4 compiles of ~40 s, SAAT ~1 s/step]
    throughput_bf16) echo 480 ;;    # [~5 min: 8 compiles (2 methods x 2 batches x float32/bfloat16) of 20-40 s]
    sa_pgd) echo 180 ;;             # [~1 min]
    train3) echo 480 ;;             # [~5 min: ~80 s/epoch + PGD-20 eval of 11k points per epoch]
    pgd20) echo 240 ;;              # [~1 min with the reference]
    autoattack) echo 560 ;;         # [~6 min: 1-epoch model if no train3 run, reference AA, JAX AA x 2]
  esac
}

part_cmd() {
  case "$1" in
    env) echo "python3 - (devices, versions, nvidia-smi) > env.json" ;;
    throughput_pr18) echo "$PY benchmarks/train_throughput.py $TT_PR18 --out $RESULTS/throughput_preact18.json" ;;
    throughput_wrn) echo "$PY benchmarks/train_throughput.py $TT_WRN --out $RESULTS/throughput_wrn34_10.json" ;;
    throughput_bf16) echo "$PY benchmarks/train_throughput.py $TT_BF16 --out $RESULTS/throughput_preact18_bf16.json" ;;
    sa_pgd) echo "$PY benchmarks/sa_pgd_overhead.py $SAPGD --out $RESULTS/sa_pgd_overhead.json" ;;
    train3) echo "$PY launch.py --config configs/saat_cifar10.py --config.num_epochs=$TRAIN3_EPOCHS $TRAIN3 $LAUNCH_COMMON --workdir $TRAIN3_DIR  (then s/epoch from metrics.jsonl -> train3.json)" ;;
    pgd20) echo "$PY benchmarks/pgd20_eval_time.py --workdir $TRAIN3_DIR (or a fresh PreAct ResNet-18) --data $DATA $PGD20 --out $RESULTS/pgd20_eval_time.json" ;;
    autoattack) echo "[no $TRAIN3_DIR checkpoint: $PY launch.py --config configs/saat_cifar10.py $AA_TRAIN $LAUNCH_COMMON --workdir $AA_DIR]; $PY -m saat_jax.export --workdir <run> --checkpoint last --out $WORK/preact18.npz; $PY benchmarks/autoattack_vs_reference.py --checkpoint $WORK/preact18.npz --arch preact_resnet18 --normalization cifar10 $AA --data $DATA --out $RESULTS/autoattack_preact18.json" ;;
  esac
}

if [ "$DRY" = 1 ]; then
  echo "gpu_suite.sh plan ($( [ "$SMOKE" = 1 ] && echo 'smoke: tiny sizes, CPU allowed' || echo 'full sizes' ))"
  echo "  repo      $ROOT"
  echo "  python    $PY"
  echo "  results   $RESULTS  (suite_<parts>.json, one JSON + one .log per part; packed into \$OUT when set)"
  echo "  work      $WORK  (runs, checkpoints, data cache)"
  echo "  data      $DATA $( [ -f "$DATA" ] && echo '(found)' || echo '(MISSING: train3, pgd20, autoattack need it)')"
  if [ -n "$WHEELS" ]; then
    echo "  wheels    $WHEELS: $(ls "$WHEELS"/*.whl 2>/dev/null | xargs -n1 basename 2>/dev/null | tr '\n' ' ')"
  else
    echo "  wheels    none given (ml-collections and, for autoattack, pyautoattack must be importable)"
  fi
  if [ "$DEADLINE" != 0 ]; then echo "  deadline  ${DEADLINE} s after the start (part limits are cut to fit)"; fi
  if command -v nvidia-smi >/dev/null 2>&1; then
    echo "  GPU       $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -1)"
  else
    echo "  GPU       none visible here (no nvidia-smi): a real run stops at the GPU check$( [ "$SMOKE" = 1 ] && echo ', except with --smoke')"
  fi
  total=0
  i=0
  for p in ${PARTS//,/ }; do
    i=$((i + 1)); lim=$(part_limit "$p"); total=$((total + lim))
    printf '  %d. %-16s limit %4d s\n       %s\n' "$i" "$p" "$lim" "$(part_cmd "$p")"
  done
  echo "  sum of limits: $total s (each part stops at its limit; the device tool allows 600 s per command,"
  echo "  so split the parts over calls: see benchmarks/README.md, 'GPU suite')"
  exit 0
fi

START=$(date +%s)
mkdir -p "$RESULTS" "$WORK" || { echo "cannot create $RESULTS or $WORK" >&2; exit 2; }
RESULTS="$(cd "$RESULTS" && pwd)"
TAG="$(echo "$PARTS" | tr ',' '+')"
STATUS="$RESULTS/parts_${TAG}.tsv"  # one per call, so that the folders of several calls merge
[ -f "$STATUS" ] || printf 'part\tstatus\trc\tseconds\tstarted_utc\tlog\n' > "$STATUS"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

say() { echo "[gpu_suite $(date -u +%H:%M:%S)] $*"; }

# ---- wheels -----------------------------------------------------------------------------------
if [ -n "$WHEELS" ]; then
  if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    SITE="$WORK/site"
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl; then
      export PYTHONPATH="$PYTHONPATH:$SITE"
      say "installed $(ls "$WHEELS"/*.whl | xargs -n1 basename | tr '\n' ' ')into $SITE"
    else
      say "WARNING: installing the wheels in $WHEELS failed; parts that need them will fail"
    fi
  else
    say "WARNING: no .whl files in $WHEELS"
  fi
fi

# ---- the GPU check ------------------------------------------------------------------------------
GPU_CHECK="$("$PY" - <<'EOF' 2>&1
import json
out = {}
try:
    import jax
    out["jax_backend"] = jax.default_backend()
    out["jax_devices"] = [f"{d.platform}:{d.device_kind}" for d in jax.devices()]
except Exception as e:
    out["jax_error"] = f"{type(e).__name__}: {e}"
try:
    import torch
    out["torch_cuda"] = torch.cuda.is_available()
    if out["torch_cuda"]:
        out["torch_device"] = torch.cuda.get_device_name()
except Exception as e:
    out["torch_error"] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
EOF
)"
GPU_CHECK="$(echo "$GPU_CHECK" | tail -1)"
if echo "$GPU_CHECK" | grep -q '"jax_backend": "gpu"'; then
  say "GPU: $GPU_CHECK"
elif [ "$SMOKE" = 1 ]; then
  say "no GPU ($GPU_CHECK): --smoke runs on the CPU"
else
  say "NO GPU: JAX does not see a GPU here ($GPU_CHECK); $(command -v nvidia-smi >/dev/null && echo 'nvidia-smi exists' || echo 'no nvidia-smi'). Nothing measured."
  printf 'gpu_check\tno_gpu\t3\t0\t%s\t-\n' "$(date -u +%FT%TZ)" >> "$STATUS"
  "$PY" - "$RESULTS" "$GPU_CHECK" "$TAG" <<'EOF'
import json, sys
json.dump({"status": "no_gpu", "gpu_check": json.loads(sys.argv[2]) if sys.argv[2].startswith("{") else sys.argv[2]},
          open(sys.argv[1] + "/suite_" + sys.argv[3] + ".json", "w"), indent=2)
EOF
  exit 3
fi

# ---- running a part -----------------------------------------------------------------------------
run_part() {  # name, then the command: its own limit, cut to the deadline; status into parts.tsv
  local name="$1"; shift
  local limit; limit=$(part_limit "$name")
  if [ "$DEADLINE" != 0 ]; then
    local left=$(( DEADLINE - ($(date +%s) - START) - 15 ))
    if [ "$left" -lt 30 ]; then
      say "$name: SKIPPED, ${left}s left before the deadline"
      printf '%s\tskipped_deadline\t-\t0\t%s\t-\n' "$name" "$(date -u +%FT%TZ)" >> "$STATUS"
      return 0
    fi
    [ "$left" -lt "$limit" ] && limit=$left
  fi
  local log="$RESULTS/$name.log" t0; t0=$(date +%s)
  say "$name: start (limit ${limit}s) -> $log"
  if declare -F "$1" >/dev/null; then  # a function of this script: timeout needs a program
    timeout --kill-after=20 "$limit" bash -c "$1" > "$log" 2>&1
  else
    timeout --kill-after=20 "$limit" "$@" > "$log" 2>&1
  fi
  local rc=$? status=ok
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status=timeout; elif [ $rc -ne 0 ]; then status=failed; fi
  local dt=$(( $(date +%s) - t0 ))
  say "$name: $status (rc $rc, ${dt}s)"
  [ "$status" = ok ] || tail -n 15 "$log" | sed 's/^/    | /'
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$dt" "$(date -u -d "@$t0" +%FT%TZ 2>/dev/null || echo -)" "$name.log" >> "$STATUS"
}

part_env() {
  "$PY" - "$RESULTS/env.json" <<'EOF'
import json, os, subprocess, sys
sys.path.insert(0, "benchmarks")
import benchinfo
try:
    import torch  # noqa: F401  (so that device_info and threads_info include it)
except ImportError:
    pass
info = {"created": benchinfo.now_utc(), "device": benchinfo.device_info(), "versions": benchinfo.versions(),
        "threads": benchinfo.threads_info(), "git": benchinfo.git_state(), "load": benchinfo.loadavg()}
try:
    info["nvidia_smi"] = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit", "--format=csv"],
        capture_output=True, text=True, timeout=30).stdout.strip().splitlines()
except (OSError, subprocess.SubprocessError) as e:
    info["nvidia_smi"] = f"unavailable: {e}"
benchinfo.write_json(sys.argv[1], info)
print(json.dumps(info, indent=2))
EOF
}

part_train3() {
  rm -rf "$TRAIN3_DIR"
  # shellcheck disable=SC2086
  "$PY" launch.py --config configs/saat_cifar10.py --config.num_epochs=$TRAIN3_EPOCHS $TRAIN3 $LAUNCH_COMMON \
    --workdir "$TRAIN3_DIR" || return $?
  "$PY" - "$TRAIN3_DIR/metrics.jsonl" "$RESULTS/train3.json" "--config.num_epochs=$TRAIN3_EPOCHS $TRAIN3" <<'EOF'
import json, sys
sys.path.insert(0, "benchmarks")
import benchinfo
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
epochs = [{k: r.get(k) for k in ("epoch", "step", "train_time_s", "eval_time_s", "train_loss", "train_accuracy",
                                 "attack_eps_mean", "attack_steps_mean", "attack_frac_satisfied",
                                 "test_natural_accuracy", "test_pgd_accuracy")} for r in rows]
steps_per_epoch = rows[0]["step"] if rows else None
steady = [e["train_time_s"] for e in epochs[1:]] or [e["train_time_s"] for e in epochs]
out = {"benchmark": "saat_cifar10_3_epochs", "created": benchinfo.now_utc(),
       "command": "python launch.py --config configs/saat_cifar10.py " + sys.argv[3],
       "config": "configs/saat_cifar10.py (paper.py:saat_up_e14_r1.7: PreAct ResNet-18, batch 128, rho 1.7)",
       "steps_per_epoch": steps_per_epoch, "epochs": epochs,
       "train_s_per_epoch_first": epochs[0]["train_time_s"] if epochs else None,
       "train_s_per_epoch_steady": sum(steady) / len(steady) if steady else None,
       "note": "train_time_s of epoch 1 includes compiling the step; eval_time_s is natural + PGD-20 on the "
               "test set and the 1,000-image training subset",
       "device": benchinfo.device_info(), "versions": benchinfo.versions(), "git": benchinfo.git_state()}
import os
cfg_path = os.path.join(os.path.dirname(sys.argv[1]), "config.json")
batch = json.load(open(cfg_path))["batch_size"] if os.path.exists(cfg_path) else 128
out["batch_size"] = batch
if steady and steps_per_epoch:
    out["images_per_s_steady"] = steps_per_epoch * batch / out["train_s_per_epoch_steady"]
benchinfo.write_json(sys.argv[2], out)
print(json.dumps({k: out[k] for k in ("train_s_per_epoch_first", "train_s_per_epoch_steady")}))
EOF
  cp "$TRAIN3_DIR/metrics.jsonl" "$RESULTS/train3_metrics.jsonl"
}

part_pgd20() {
  local src=(--model preact_resnet18)
  if [ -d "$TRAIN3_DIR/checkpoints/last" ]; then src=(--workdir "$TRAIN3_DIR"); fi
  [ "$SMOKE" = 1 ] && [ "${src[0]}" = --model ] && src=(--model small_cnn)
  # shellcheck disable=SC2086
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.45 "$PY" benchmarks/pgd20_eval_time.py "${src[@]}" --data "$DATA" \
    --cache-dir "$CACHE" $PGD20 --out "$RESULTS/pgd20_eval_time.json"
}

part_autoattack() {
  local run="$TRAIN3_DIR"
  if [ "$SMOKE" = 1 ] || [ ! -d "$TRAIN3_DIR/checkpoints/last" ] || \
     ! grep -q preact_resnet18 "$TRAIN3_DIR/config.json" 2>/dev/null; then
    run="$AA_DIR"
    if [ ! -d "$AA_DIR/checkpoints/last" ]; then
      echo "no PreAct ResNet-18 run in $TRAIN3_DIR: training one epoch for AutoAttack to attack"
      # shellcheck disable=SC2086
      "$PY" launch.py --config configs/saat_cifar10.py $AA_TRAIN $LAUNCH_COMMON --workdir "$AA_DIR" || return $?
    fi
  fi
  "$PY" -m saat_jax.export --workdir "$run" --checkpoint last --out "$WORK/preact18.npz" || return $?
  # shellcheck disable=SC2086
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.45 "$PY" benchmarks/autoattack_vs_reference.py --checkpoint "$WORK/preact18.npz" \
    --arch preact_resnet18 --normalization cifar10 $AA --data "$DATA" --out "$RESULTS/autoattack_preact18.json" || return $?
  echo "{\"attacked_run\": \"$run\"}" > "$RESULTS/autoattack_model.json"
}

export PY DATA RESULTS WORK CACHE SMOKE TRAIN3 TRAIN3_EPOCHS TRAIN3_DIR LAUNCH_COMMON PGD20 AA AA_TRAIN AA_DIR
export -f part_env part_train3 part_pgd20 part_autoattack
for p in ${PARTS//,/ }; do
  case "$p" in
    env) run_part env part_env ;;
    # shellcheck disable=SC2086
    throughput_pr18) run_part "$p" "$PY" benchmarks/train_throughput.py $TT_PR18 --out "$RESULTS/throughput_preact18.json" ;;
    # shellcheck disable=SC2086
    throughput_wrn) run_part "$p" "$PY" benchmarks/train_throughput.py $TT_WRN --out "$RESULTS/throughput_wrn34_10.json" ;;
    # shellcheck disable=SC2086
    throughput_bf16) run_part "$p" "$PY" benchmarks/train_throughput.py $TT_BF16 --out "$RESULTS/throughput_preact18_bf16.json" ;;
    # shellcheck disable=SC2086
    sa_pgd) run_part "$p" "$PY" benchmarks/sa_pgd_overhead.py $SAPGD --out "$RESULTS/sa_pgd_overhead.json" ;;
    train3) run_part "$p" part_train3 ;;
    pgd20) run_part "$p" part_pgd20 ;;
    autoattack) run_part "$p" part_autoattack ;;
  esac
done

# ---- summary, and the results back through the device tool's $OUT ------------------------------
"$PY" - "$RESULTS" "$GPU_CHECK" "$PARTS" "$(( $(date +%s) - START ))" "$TAG" <<'EOF'
import csv, json, os, sys
res, check, parts, total, tag = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
with open(os.path.join(res, f"parts_{tag}.tsv")) as f:
    rows = list(csv.DictReader(f, delimiter="\t"))
summary = {"gpu_check": json.loads(check) if check.startswith("{") else check, "parts_asked": parts.split(","),
           "seconds_this_call": total, "parts": rows,
           "files": sorted(n for n in os.listdir(res) if n.endswith((".json", ".jsonl")) and not n.startswith("suite_"))}
with open(os.path.join(res, f"suite_{tag}.json"), "w") as f:
    json.dump(summary, f, indent=2)
for r in rows:
    print(f"  {r['part']:<16} {r['status']:<17} {r['seconds']:>5} s")
EOF
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then  # the device tool brings back what is under $OUT
  tar czf "$OUT/gpu_results_${TAG}.tar.gz" -C "$(dirname "$RESULTS")" "$(basename "$RESULTS")" && \
    say "packed $RESULTS into \$OUT/gpu_results_${TAG}.tar.gz"
  cp "$RESULTS/suite_${TAG}.json" "$OUT/" 2>/dev/null
fi
say "done in $(( $(date +%s) - START )) s; results in $RESULTS"
if awk -F'\t' 'NR > 1 && ($2 == "failed" || $2 == "timeout") {bad = 1} END {exit !bad}' "$STATUS"; then exit 1; fi
exit 0
