#!/usr/bin/env bash
# A newcomer's first hour, scripted (issue 15), with the harness of the active Python environment
# (CI runs it right after .ci/run has made a fresh venv with the README's install commands):
# a copy of the repository as a clone has it, the README's commands, runs on Wikipedia, a
# leaderboard, a plot, Ctrl-C in the middle of a run and a second run. Each check says what a
# newcomer would have met; the script stops at the first one that fails. About a minute.
#
#   tests/first_hour.sh                 (Wikipedia from ../shared/data/, or WIKIPEDIA=path)
#   FRESH_VENV=1 tests/first_hour.sh    first a fresh venv in the copy, installed with the
#                                       README's commands (minutes more); TORCH_INSTALL replaces
#                                       the README's torch line where PyTorch's index is out of reach
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/first-hour.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
LOGS="$WORK/logs" && mkdir -p "$LOGS"
WIKIPEDIA=${WIKIPEDIA:-$ROOT/../shared/data/wikipedia.csv}
step() { echo "first hour: [${SECONDS} s] $*" >&2; }
fail() { echo "first hour: FAIL: $*" >&2; exit 1; }
has() { grep -qF -- "$2" "$1" || fail "$1 lacks '$2': $(tail -5 "$1")"; }
lacks() { ! grep -qF -- "$2" "$1" || fail "$1 shows '$2': $(grep -F -- "$2" "$1" | head -3)"; }

step "a clone: the tracked files, nothing built, in $WORK/clone"
mkdir "$WORK/clone"
(cd "$ROOT" && git ls-files -co --exclude-standard -z | xargs -0 cp -d --parents -t "$WORK/clone")
cd "$WORK/clone"
git init -q && git add -A && git -c user.name=first -c user.email=hour@example.org commit -qm clone
export HARNESS_DATA="$WORK/data"  # the hour's downloads and caches, nowhere else
if [[ ${FRESH_VENV:-} == 1 ]]; then
    step "a fresh venv, installed with the README's commands"
    readme_install=$(sed -n '/^## Set up and run/,/^harness run$/p' README.md | grep '^pip install')
    python3 -m venv .venv && . .venv/bin/activate
    while read -r line; do
        [[ $line == "pip install torch"* && -n ${TORCH_INSTALL:-} ]] && line=$TORCH_INSTALL
        step "  $line"
        $line -q > "$LOGS/install.txt" 2>&1 || fail "$line: $(tail -5 "$LOGS/install.txt")"
    done <<< "$readme_install"
fi
umask 022

step "the data: a registered name, as the README says"
if [[ -f "$WIKIPEDIA" ]]; then
    harness datasets import "$WIKIPEDIA" --name wikipedia > "$LOGS/import.txt"
    DATASET=wikipedia
else
    step "no Wikipedia file at $WIKIPEDIA: the runs use synthetic"
    DATASET=synthetic
fi
harness datasets list > "$LOGS/list.txt"
lacks "$LOGS/list.txt" "harness.data.synthetic:"  # descriptions, not module:Class
has "$LOGS/list.txt" "sized like JODIE Wikipedia"
harness datasets info synthetic > "$LOGS/info-synthetic.txt"
has "$LOGS/info-synthetic.txt" "synthetic-reddit"
if [[ $DATASET == wikipedia ]]; then
    harness datasets info wikipedia > "$LOGS/info.txt"
    lacks "$LOGS/info.txt" "500 MB"  # the imported file's own size and statistics
    has "$LOGS/info.txt" "MB here"
    has "$LOGS/info.txt" "157474"
fi

step "a run on $DATASET, output to files (no terminal)"
harness run --models popularity --dataset "$DATASET" > "$LOGS/run1.out" 2> "$LOGS/run1.err" \
    || fail "harness run: $(tail -5 "$LOGS/run1.err")"
has "$LOGS/run1.err" "popularity seed 0 · fit "
has "$LOGS/run1.err" "popularity seed 0 · test mrr "
has "$LOGS/run1.err" "1 run record in results/:"
has "$LOGS/run1.err" "  popularity seed 0: ok"
if [[ $DATASET == wikipedia ]]; then
    step "the same file by its path: one dataset, one table"
    harness run --models recency --dataset "$WIKIPEDIA" > /dev/null 2> "$LOGS/run2.err" \
        || fail "harness run: $(tail -5 "$LOGS/run2.err")"
fi
harness leaderboard --dataset "$DATASET" > "$LOGS/board.md"
[[ $(grep -c "protocol streaming" "$LOGS/board.md") == 1 ]] || fail "not one table: $(cat "$LOGS/board.md")"
has "$LOGS/board.md" "$DATASET · protocol streaming"
has "$LOGS/board.md" "| popularity"
harness leaderboard --dataset "$DATASET" --format latex > "$LOGS/board.tex"
grep -q 'begin{tabular}{lr*l}' "$LOGS/board.tex" || fail "numbers not right-aligned: $(head -3 "$LOGS/board.tex")"

step "a plot"
harness plot > "$LOGS/plot.txt" 2>&1 || fail "harness plot: $(tail -5 "$LOGS/plot.txt")"
ls results/figures/*.png > /dev/null || fail "no figure in results/figures"

step "Ctrl-C in the middle of a run"
python - "$LOGS/interrupted.err" <<'EOF' || fail "Ctrl-C: $(tail -8 "$LOGS/interrupted.err")"
import os, signal, subprocess, sys, time
err = open(sys.argv[1], "w")
env = {**os.environ, "FIRST_HOUR_MARK": str(os.getpid())}
# as on a terminal: the command in its own process group, which Ctrl-C signals as a whole
run = subprocess.Popen(["harness", "run", "--models", "gru4rec", "--epochs", "20",
                        "--param", "gru4rec.hidden_size=16"], stdout=subprocess.DEVNULL,
                       stderr=err, env=env, start_new_session=True,
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
deadline = time.time() + 120
while "epoch 1/20" not in open(sys.argv[1]).read():
    if time.time() > deadline or run.poll() is not None:
        sys.exit("no epoch line before Ctrl-C")
    time.sleep(0.2)
os.killpg(run.pid, signal.SIGINT)
if run.wait(timeout=60) != 130:
    sys.exit(f"exit status {run.returncode}, not 130")
time.sleep(1)
for pid in filter(str.isdigit, os.listdir("/proc")):  # nothing of that run may be left running
    try:
        environ = open(f"/proc/{pid}/environ", "rb").read()
    except OSError:
        continue
    if f"FIRST_HOUR_MARK={os.getpid()}".encode() in environ.split(b"\0"):
        sys.exit(f"process {pid} of the interrupted run is still running")
EOF
has "$LOGS/interrupted.err" "not finished: gru4rec seed 0"
has "$LOGS/interrupted.err" "harness: interrupted"
lacks "$LOGS/interrupted.err" "Traceback"
lacks "$LOGS/interrupted.err" "leaked"
[[ -z $(find results -name 'gru4rec*.json' -o -name '*.tmp') ]] || fail "the interrupted run left files"

step "a second run, with epochs"
harness run --models gru4rec,popularity --epochs 2 --param gru4rec.hidden_size=16 \
    > "$LOGS/run3.out" 2> "$LOGS/run3.err" || fail "second run: $(tail -5 "$LOGS/run3.err")"
has "$LOGS/run3.err" "gru4rec seed 0 · epoch 1/2 · loss "
has "$LOGS/run3.err" "gru4rec seed 0 · epoch 2/2 · loss "
has "$LOGS/run3.err" "valid mrr "
has "$LOGS/run3.err" "2 run records in results/:"
has "$LOGS/run3.err" "  gru4rec seed 0: ok, 2 epochs (best "
for log in "$LOGS"/*.err; do lacks "$log" "Traceback"; lacks "$log" "Warning:"; done
python - <<'EOF' || fail "the run record lacks its device"
import glob, json
(path,) = glob.glob("results/synthetic/streaming/gru4rec-*.json")
device = json.load(open(path))["environment"]["device"]
assert device["requested"] == "auto" and device["used"] in ("cpu", "cuda:0", "cuda"), device
EOF

step "what the hour left behind"
bad=$(find results -type f -name '*.json' ! -perm 0644)
[[ -z $bad ]] || fail "records not written with the umask (022): $bad"
status=$(git status --porcelain)
[[ -z $status ]] || fail "git status is not clean after the first hour: $status"
step "ok"
