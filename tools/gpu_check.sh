#!/usr/bin/env bash
# One prepared check of the CUDA path on a GPU machine (docs/performance.md has its figures): the
# benchmark, one epoch of the default recipe in the default precision, in fp32 and with CUDA graphs,
# predict.py on the test split, and the CUDA tests. Usage: bash tools/gpu_check.sh DATA_ROOT [OUT_DIR]
set -u
data=${1:?usage: tools/gpu_check.sh DATA_ROOT [OUT_DIR]}
out=${2:-gpu_check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
run() {  # run NAME LIMIT_S LOG COMMAND...: the command's output in LOG, its last lines and time here
    local name=$1 limit=$2 log=$3 start=$SECONDS
    shift 3
    timeout "$limit" "$@" > "$log" 2>&1
    echo "== $name: exit $? in $((SECONDS - start)) s"
    tail -n 6 "$log" | tr '\r' '\n' | tail -n 6
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
run benchmark 240 "$out/benchmark.json" python3 benchmark.py --device cuda --data_root "$data" --json
cat "$out/benchmark.json"
run "train, default precision" 150 "$out/train_auto.log" \
    python3 train.py --device cuda --data_root "$data" --epochs 1 --lr_decay_epochs 0 --name gpu_auto
run "train, fp32" 150 "$out/train_fp32.log" \
    python3 train.py --device cuda --data_root "$data" --epochs 1 --lr_decay_epochs 0 --name gpu_fp32 --precision fp32
run "train, default precision, CUDA graphs" 150 "$out/train_graphs.log" \
    python3 train.py --device cuda --data_root "$data" --epochs 1 --lr_decay_epochs 0 --name gpu_graphs --cuda_graphs true
cp results/gpu_graphs/history.csv "$out/history_graphs.csv"
cp results/gpu_auto/history.csv "$out/history_auto.csv"; cp results/gpu_fp32/history.csv "$out/history_fp32.csv"
run "predict --split test" 120 "$out/predict.log" \
    python3 predict.py --checkpoint checkpoints/gpu_auto/latest.pt --split test --data_root "$data" --device cuda
run "CUDA tests" 120 "$out/tests.log" python3 -m pytest -q -p no:cacheprovider tests -k cuda
