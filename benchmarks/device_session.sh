#!/usr/bin/env bash
# The accelerator figures of docs/performance.md in one prepared run, for minutes of GPU time.
#
#   bash benchmarks/device_session.sh prepare            # here (package registry, data installed): .device_kit/
#   bash benchmarks/device_session.sh run OUT [STEP...]  # on the device, .device_kit carried: figures in OUT/
#   TINY=1 bash benchmarks/device_session.sh run OUT     # a dry run on a CPU: every step at toy size
#
# `prepare` fills .device_kit/ (git-ignored) with what a bare device image lacks: the ml-collections, tensorboardX,
# protobuf and pytest wheels and the four Fashion-MNIST files. `run` installs the wheels if they are missing (and
# stops, exit 3, if the kit was not carried), then runs the steps named (default: all, most wanted first), each
# under its own time limit (SIGINT at the limit, so that pytest prints its failures and main.py saves; SIGKILL 15 s
# later): a step writes WORK/NAME.out (its output, the benchmarks' JSON lines included) and appends its exit status
# and seconds to WORK/steps.txt, so a step that fails or runs out of time costs only itself. WORK (DEVICE_WORK,
# default /tmp/fmnist_device) also holds the runs and caches. The device tool brings back at most 8 files from OUT,
# so after every step OUT gets two: steps.txt and figures.tgz (WORK without its runs and caches: every .out and
# every kept results.json), and a call stopped at its limit still brings back the steps before it. Call it with
# kind nvidia-h200 (the targets are an H200's). A session's 15 minutes of device time (the machine's start
# included) hold the first four calls, most wanted first, each group's limits within one call's 10 minutes:
#   `env resume` (limits 300 s, 540 with the retry), `check start` (390), `loop` (480), `speedrun` (480), each
#   step 15 s more at most; a later session: `fast95` (300), `wide0 wide1` (540), `wide2` (330). Their expected
#   times are a fraction of the limits (docs/performance.md's H200 figures); resume's is unmeasured on a GPU. The steps:
#   env        devices, versions, the GPU
#   check      python -m benchmarks accelerator_check (the study CNN: compile, images/s, evaluation, bfloat16)
#   start      the study's 30-epoch run through main.py, start to finish (target: 12 s of wall time on an H200),
#              with a cold and then a warm persistent compilation cache; each results.json (where the seconds went)
#              kept as WORK/start_cold_results.json and WORK/start_warm_results.json
#   loop       loop_overhead for the study CNN (30 epochs) and vgg_bn_large (20), host overlap on and off
#   resume     the SIGKILL, SIGTERM and SIGINT resume tests (the study CNN's and VGG-BN's) and the same run twice
#              on the GPU (bit-identical parameters); if a test fails, all again with
#              XLA_FLAGS=--xla_gpu_deterministic_ops=true
#   speedrun   time_to_accuracy of configs/speedrun_gpu.py (batch 512, 24 epochs), seeds 0-4: its test accuracy and
#              training seconds against its aims (docs/models.md: 0.94 in <= 2 s, 0.95 in <= 10 s on an H200); then
#              configs/speedrun.py as it is (batch 64, 26 epochs), one seed: the GPU's time for the CPU's recipe
#   fast95     the screen for 0.95 in <= 10 s (docs/models.md, "At a GPU's batch"): speedrun_gpu at widths
#              48/96/192, then 64/128/256, 32 epochs, on the validation split; WORK/fast95_N.json. Not in the default
#              list: about 1-2 minutes on an H200
#   wide       the screen for 0.960 on one GPU (docs/models.md, "Towards 0.96"): on the validation split, seed 0,
#              without a compilation cache, wide0 vgg_bn_large as it is, wide1 1.5x wider, wide2 200 epochs (`wide`:
#              all three); each results.json kept as WORK/wide_N.json. About 6 minutes on an H200 in all, not in the
#              default list: run `wide0 wide1`, then `wide2`, each call under the device's 10-minute limit
set -uo pipefail
cd "$(dirname "$0")/.."
KIT=.device_kit
DATA=${FMNIST_DATA_DIR:-/usr/share/datasets/fashion-mnist}  # prepare packs these; run reads the kit's, else these

usage() { sed -n '3,6p' "$0" >&2; exit 2; }

case "${1:-}" in
  prepare)
    mkdir -p "$KIT/wheels" "$KIT/data"
    python3 -m pip download -q --no-deps -d "$KIT/wheels" "ml-collections>=1.0,<2" "tensorboardX>=2.6,<3" protobuf \
      pytest pluggy iniconfig packaging pygments
    cp "$DATA"/*-ubyte.gz "$KIT/data/"
    ls -l "$KIT/wheels" "$KIT/data"
    exit 0 ;;
  run) OUT=${2:-}; [ -n "$OUT" ] || usage; shift 2 ;;
  *) usage ;;
esac
STEPS=${*:-env resume check start loop speedrun}
KNOWN="env check start loop resume speedrun fast95 wide wide0 wide1 wide2"
for s in $STEPS; do  # all named right before any spends device time
  case " $KNOWN " in *" $s "*) ;; *) echo "error: unknown step $s (the steps: $KNOWN)" >&2; exit 2 ;; esac
done
WORK=${DEVICE_WORK:-/tmp/fmnist_device}
mkdir -p "$OUT" "$WORK"
PY=${PYTHON:-python3}
# What is missing goes to a folder of its own on PYTHONPATH (the device's recipe: its environment may be read-only);
# the processes the steps start inherit it.
SITE=$WORK/site
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
# Each alone (--no-deps): a dependency the image has must not be shadowed by the kit's copy, first on PYTHONPATH.
for pair in ml_collections:ml-collections tensorboardX:tensorboardX google.protobuf:protobuf pytest:pytest \
    pluggy:pluggy iniconfig:iniconfig packaging:packaging pygments:pygments; do
  $PY -c "import ${pair%%:*}" 2>/dev/null || $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --find-links="$KIT/wheels" --target "$SITE" "${pair#*:}"
done
DATA_DIR=$([ -f "$KIT/data/train-images-idx3-ubyte.gz" ] && echo "$PWD/$KIT/data" || echo "$DATA")
if ! $PY -c "import ml_collections, tensorboardX, google.protobuf, pytest" || \
    [ ! -f "$DATA_DIR/train-images-idx3-ubyte.gz" ]; then
  echo "error: a package or the data set is missing: run \`bash benchmarks/device_session.sh prepare\` where pip" \
    "works and carry $KIT" >&2
  exit 3
fi
export FMNIST_DATA_DIR=$DATA_DIR FMNIST_REAL_DATA_DIR=$DATA_DIR

# Toy sizes for a dry run on a CPU: a few hundred images, one or two epochs, a few timed steps. On the GPU the loop's
# bare timing takes 3,000 steps (the study CNN's about a second, vgg_bn_large's 6 s): 300 would be over before the
# GPU's clocks had risen.
if [ -n "${TINY:-}" ]; then
  SMALL=(--config.data.num_train=1024 --config.data.validation_size=256 --config.steps_per_call=2)
  CNN_EPOCHS=1 LARGE_EPOCHS=1 TIMED=20 SPEEDRUN_EPOCHS=1 LIMIT=1 WIDE_EPOCHS=1 WIDE_LONG=2
  SLOWER=3  # the limits are a GPU's: a CPU's toy steps (vgg_bn_large's above all) take longer
else
  SMALL=() CNN_EPOCHS=30 LARGE_EPOCHS=20 TIMED=3000 SPEEDRUN_EPOCHS=0 LIMIT=0 WIDE_EPOCHS=0 WIDE_LONG=200 SLOWER=1
fi

step() {  # step NAME SECONDS COMMAND...: runs COMMAND under a time limit, its output to WORK/NAME.out
  local name=$1 limit=$(( $2 * SLOWER )) start rc
  shift 2
  start=$(date +%s%N)
  timeout -s INT -k 15 "$limit" "$@" >"$WORK/$name.out" 2>&1
  rc=$?
  echo "$name rc=$rc $(( ($(date +%s%N) - start) / 1000000 )) ms" | tee -a "$WORK/steps.txt"
  tail -n 2 "$WORK/$name.out" | cut -c1-300  # in the call's output too
  bring_back
}

bring_back() {  # OUT/steps.txt and OUT/figures.tgz, replaced whole (a call stopped mid-write keeps the last ones)
  cp "$WORK/steps.txt" "$OUT/steps.txt.part" && mv "$OUT/steps.txt.part" "$OUT/steps.txt"
  tar czf "$OUT/figures.tgz.part" -C "$WORK" --exclude=./runs --exclude=./xla_cache . &&
    mv "$OUT/figures.tgz.part" "$OUT/figures.tgz"
}

for s in $STEPS; do
  case $s in
    env)
      step env 60 bash -c "nvidia-smi; grep -m1 'model name' /proc/cpuinfo; nproc; $PY -c 'import jax, flax, optax, \
orbax.checkpoint as o; print(jax.devices(), jax.__version__, flax.__version__, optax.__version__, o.__version__)'; \
$PY -m pip list 2>/dev/null | grep -i -E '^(jax|jaxlib|jax-cuda|nvidia-cudnn|nvidia-cublas|ml.dtypes)' || true" ;;
    check)
      if [ "$LIMIT" = 1 ]; then extra=(--steps=5 --large_batch=128); else extra=(); fi
      step check 150 $PY -m benchmarks accelerator_check "${extra[@]}" ;;
    start)  # twice: a cold persistent compilation cache (filled by the run), then a warm one
      rm -rf "$WORK/xla_cache"
      for pass in cold warm; do
        rm -rf "$WORK/runs/cnn_$pass"
        step "start_$pass" 120 env JAX_COMPILATION_CACHE_DIR="$WORK/xla_cache" \
          JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 $PY main.py --config=configs/cnn.py \
          --workdir="$WORK/runs/cnn_$pass" --config.num_epochs=$CNN_EPOCHS "${SMALL[@]}"
        cp "$WORK/runs/cnn_$pass/results.json" "$WORK/start_${pass}_results.json" 2>/dev/null && bring_back
      done ;;
    loop)
      for overlap in on off; do
        step "loop_cnn_$overlap" 105 $PY -m benchmarks loop_overhead --config=cnn --steps=$TIMED \
          --config.num_epochs=$CNN_EPOCHS --config.host_overlap=$overlap "${SMALL[@]}"
        step "loop_vgg_bn_large_$overlap" 135 $PY -m benchmarks loop_overhead --config=vgg_bn_large --steps=$TIMED \
          --config.num_epochs=$LARGE_EPOCHS --config.host_overlap=$overlap "${SMALL[@]}"
      done ;;
    resume)  # every kill/signal test and the same run twice; if any fails, again with deterministic GPU kernels
      # The tests' own process trains the reference run while the runs they start train beside it: JAX's default
      # of taking 75% of the GPU's memory at the start would leave each of those a quarter, so each takes what it uses.
      tests=(tests/test_checkpoints.py tests/test_vgg_bn_runs.py tests/test_fingerprint.py -p no:cacheprovider
        -k "sigkill or sigterm or signal or twice" --durations=0)
      step resume 240 env XLA_PYTHON_CLIENT_PREALLOCATE=false $PY -m pytest -q "${tests[@]}"
      if tail -1 "$WORK/steps.txt" | grep -q " rc=1 "; then  # a test failed (not a time-out, not a set-up error)
        step resume_deterministic 240 env XLA_PYTHON_CLIENT_PREALLOCATE=false \
          XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_deterministic_ops=true" $PY -m pytest -q "${tests[@]}"
      fi ;;
    speedrun)
      epochs=()
      [ "$SPEEDRUN_EPOCHS" != 0 ] && epochs=(--config.num_epochs=$SPEEDRUN_EPOCHS)
      step speedrun_gpu 270 $PY -m benchmarks time_to_accuracy --config=speedrun_gpu --seeds=5 "${epochs[@]}" \
        "${SMALL[@]}"
      step speedrun 210 $PY -m benchmarks time_to_accuracy --config=speedrun --seeds=1 "${epochs[@]}" "${SMALL[@]}" ;;
    fast95)  # the screen for 0.95 in <= 10 s (docs/models.md, "At a GPU's batch"): speedrun_gpu wider, 32 epochs
      for v in 1 2; do
        case $v in 1) widths=48,96,192 ;; 2) widths=64,128,256 ;; esac
        epochs=(--config.num_epochs=32)
        [ "$SPEEDRUN_EPOCHS" != 0 ] && epochs=(--config.num_epochs=$SPEEDRUN_EPOCHS)
        rm -rf "$WORK/runs/fast95_$v"
        step "fast95_$v" 150 $PY main.py --config=configs/speedrun_gpu.py --workdir="$WORK/runs/fast95_$v" \
          --config.data.validation_size=12000 --config.model.widths=$widths --config.compilation_cache=off \
          "${epochs[@]}" "${SMALL[@]}"
        cp "$WORK/runs/fast95_$v/results.json" "$WORK/fast95_$v.json" 2>/dev/null && bring_back
      done ;;
    wide|wide0|wide1|wide2)  # V0 the reference, V1 wider, V2 longer; the rules: docs/models.md, "Towards 0.96"
      [ "$s" = wide ] && variants="0 1 2" || variants=${s#wide}
      for v in $variants; do
        case $v in
          0) extra=() limit=240 ;;
          1) extra=(--config.model.widths=96,192,384) limit=300 ;;
          2) extra=(--config.num_epochs=$WIDE_LONG) limit=330 ;;
        esac
        [ "$WIDE_EPOCHS" != 0 ] && [ "$v" != 2 ] && extra+=(--config.num_epochs=$WIDE_EPOCHS)
        rm -rf "$WORK/runs/wide_$v"
        step "wide$v" $limit $PY main.py --config=configs/vgg_bn_large.py --workdir="$WORK/runs/wide_$v" \
          --config.data.validation_size=12000 --config.compilation_cache=off "${extra[@]}" "${SMALL[@]}"
        cp "$WORK/runs/wide_$v/results.json" "$WORK/wide_$v.json" 2>/dev/null
        cp "$WORK/runs/wide_$v/history.jsonl" "$WORK/wide_$v.history.jsonl" 2>/dev/null && bring_back
      done ;;
  esac
  bring_back  # with the results.json kept after its last step
done
