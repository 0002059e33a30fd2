#!/usr/bin/env bash
# The default recipe as a long run kept outside the checkout, started and resumed with the same
# command at the lowest priority (other work on the machine goes first), every start and stop
# recorded in RUN_DIR/stretches.log (the input of tools/results_page.py), and so is its end when it
# finishes (or dies) by itself: an "end" line at latest.pt's time, written by the next start, stop,
# status or page; its snapshots scored on the test split, and the run written up as docs/results.md.
#
#   bash tools/long_run.sh start [RUN_DIR] [train.py options...]   # starts, or resumes exactly
#   bash tools/long_run.sh stop [RUN_DIR]                          # Ctrl-C: latest.pt, then exit
#   bash tools/long_run.sh status [RUN_DIR]
#   bash tools/long_run.sh evaluate RUN_DIR EPOCH [predict.py options...]   # e.g. --data_root DIR
#   bash tools/long_run.sh page [RUN_DIR] [results_page.py options...]
#
# RUN_DIR defaults to ~/pix2pix-runs; the run's folders are RUN_DIR/checkpoints/facades and
# RUN_DIR/results/facades, its console output RUN_DIR/console.log. evaluate scores
# epoch_NNN.pt with predict.py --split test --fid in the paper's mode (--eval_mode false) and with
# --eval_mode true, into RUN_DIR/eval/epoch_NNN_eval_false and _eval_true (console output in
# each one's .log beside it); a mode already scored is skipped, and while the run trains it says
# first that stopping the run makes the scoring several times faster. page gives tools/results_page.py
# every scored folder, with --figures docs/results --output docs/results.md unless the options
# given say otherwise. Relative paths are taken from the checkout's root, where it runs.
set -u
cd "$(dirname "$0")/.."
usage="usage: tools/long_run.sh start [RUN_DIR] [train.py options...] | stop|status [RUN_DIR]
       | evaluate RUN_DIR EPOCH [predict.py options...] | page [RUN_DIR] [results_page.py options...]"
action=${1:?$usage}
run=${2:-$HOME/pix2pix-runs}
shift $(( $# >= 2 ? 2 : 1 ))
latest="$run/checkpoints/facades/latest.pt"
pidfile="$run/train.pid"
epoch() {  # the epoch latest.pt records (0 before the first one)
    python -c "import sys, torch; print(torch.load(sys.argv[1], mmap=True, weights_only=True)['epoch'])" \
        "$latest" 2> /dev/null || echo 0
}
running() {  # the recorded process is alive and is still this run's train.py (pids are reused)
    [ -f "$pidfile" ] && ps -ww -o args= -p "$(cat "$pidfile")" 2> /dev/null \
        | grep -qF -- "train.py --checkpoint_dir $run/checkpoints"
}
record_end() {  # a stretch that ended by itself gets its end: the time latest.pt was last saved
    # No latest.pt: the stretch saved nothing, so it has no time to end at; it stays open.
    if ! running && [ -f "$latest" ] && [ -f "$run/stretches.log" ] \
        && tail -n 1 "$run/stretches.log" | grep -q '^start '; then
        echo "end $(date -u -r "$latest" +%FT%TZ) epoch $(epoch)" >> "$run/stretches.log"
        rm -f "$pidfile"
    fi
}
case "$action" in
start | stop | status | page) record_end ;;
esac
case "$action" in
start)
    if running; then echo "already running (pid $(cat "$pidfile"))"; exit 1; fi
    mkdir -p "$run"
    cpu=$(lscpu | sed -n 's/^Model name: *//p')
    family=$(lscpu | sed -n 's/^CPU family: *//p')
    model=$(lscpu | sed -n 's/^Model: *//p')
    precision=$(python -c "import torch, utils; print(utils.resolve_precision('auto', torch.device('cpu')))")
    echo "start $(date -u +%FT%TZ) epoch $(epoch) cpu $cpu | family $family model $model | $precision" \
        >> "$run/stretches.log"
    PYTHONUNBUFFERED=1 setsid nice -n 19 python train.py --checkpoint_dir "$run/checkpoints" \
        --results_dir "$run/results" --name facades "$@" >> "$run/console.log" 2>&1 &
    echo $! > "$pidfile"
    echo "started (pid $!): tail -f $run/results/facades/train.log"
    ;;
stop)
    if ! running; then echo "not running"; exit 1; fi
    kill -INT "$(cat "$pidfile")"
    while running; do sleep 2; done
    echo "stop $(date -u +%FT%TZ) epoch $(epoch)" >> "$run/stretches.log"
    rm -f "$pidfile"
    tail -n 2 "$run/console.log" | tr '\r' '\n' | tail -n 2
    ls -l "$latest"
    ;;
status)
    running && echo "running (pid $(cat "$pidfile"))" || echo "not running"
    echo "latest.pt: epoch $(epoch)"
    ;;
evaluate)
    case ${1:-} in '' | *[!0-9]*) echo "$usage"; exit 2 ;; esac
    nnn=$(printf %03d $((10#$1)))  # 10#: 010 is ten, not octal
    shift
    snapshot="$run/checkpoints/facades/epoch_$nnn.pt"
    if [ ! -f "$snapshot" ]; then echo "error: $snapshot: no such checkpoint file" >&2; exit 1; fi
    if running; then  # both compete for the same cores: each runs at a fraction of its speed
        echo "note: the run is training (pid $(cat "$pidfile")): scoring beside it takes several times" \
            "longer; for the quickest score, tools/long_run.sh stop $run first and start it again after" >&2
    fi
    mkdir -p "$run/eval"
    for mode in false true; do
        out="$run/eval/epoch_${nnn}_eval_$mode"
        # metrics.json comes after every image: a mode stopped halfway has none and is done again
        # (predict.py replaces the files it wrote).
        if [ -f "$out/metrics.json" ]; then
            echo "eval_mode $mode: $out/metrics.json exists, skipped"
            continue
        fi
        if ! nice -n 10 python predict.py --checkpoint "$snapshot" --split test --fid --eval_mode "$mode" \
            --output "$out" "$@" > "$out.log" 2>&1; then
            echo "eval_mode $mode: $(tail -n 1 "$out.log") (all of it in $out.log)" >&2
            exit 1
        fi
        echo "eval_mode $mode: $(tail -n 2 "$out.log" | head -n 1)"  # the metrics line, before "wrote DIR"
    done
    ;;
page)
    tests=()
    # The glob's order is the epochs' (NNN zero-padded), eval_false before eval_true of each.
    for metrics in "$run"/eval/epoch_*_eval_*/metrics.json; do
        [ -f "$metrics" ] || continue  # nothing scored yet: the pattern itself
        dir=${metrics%/metrics.json}
        name=${dir##*/epoch_}  # NNN_eval_false or NNN_eval_true
        label=$((10#${name%%_*}))
        [ "${name##*_}" = true ] && label+=:eval
        tests+=(--test_dir "$label=$dir")
    done
    # The defaults come first: argparse keeps the last --figures or --output given.
    python tools/results_page.py --results "$run/results/facades" --stretches "$run/stretches.log" \
        --figures docs/results --output docs/results.md "${tests[@]}" "$@"
    ;;
*)
    echo "$usage"
    exit 2
    ;;
esac
