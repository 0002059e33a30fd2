#!/usr/bin/env bash
# The default recipe as a long run kept outside the checkout, started and resumed with the same
# command at the lowest priority (other work on the machine goes first), every start and stop
# recorded in RUN_DIR/stretches.log (the input of tools/results_page.py).
#
#   bash tools/long_run.sh start [RUN_DIR] [train.py options...]   # starts, or resumes exactly
#   bash tools/long_run.sh stop [RUN_DIR]                          # Ctrl-C: latest.pt, then exit
#   bash tools/long_run.sh status [RUN_DIR]
#
# RUN_DIR defaults to ~/pix2pix-runs; the run's folders are RUN_DIR/checkpoints/facades and
# RUN_DIR/results/facades, its console output RUN_DIR/console.log.
set -u
cd "$(dirname "$0")/.."
action=${1:?usage: tools/long_run.sh start|stop|status [RUN_DIR] [train.py options...]}
run=${2:-$HOME/pix2pix-runs}
shift $(( $# >= 2 ? 2 : 1 ))
latest="$run/checkpoints/facades/latest.pt"
pidfile="$run/train.pid"
epoch() {  # the epoch latest.pt records (0 before the first one)
    python -c "import sys, torch; print(torch.load(sys.argv[1], mmap=True, weights_only=True)['epoch'])" \
        "$latest" 2> /dev/null || echo 0
}
running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2> /dev/null; }
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
*)
    echo "usage: tools/long_run.sh start|stop|status [RUN_DIR] [train.py options...]"
    exit 2
    ;;
esac
