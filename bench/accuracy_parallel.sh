#!/usr/bin/env bash
# The accuracy protocol (bench/accuracy.py) as many single-fit processes at once, for a machine
# with more cores than this one and an accelerator: the GPU table of model/README.md. Each fit is
# its own process and CSV (no two writers share a file); no fit starts after the deadline, and
# whatever finished is merged into OUT/TAG.csv, OUT/TAG-npz.tgz (per-fit scores) and
# OUT/TAG-logs.tgz, so a run cut short still keeps every finished fit.
#
#   bench/accuracy_parallel.sh OUT TAG JOBS DEADLINE_S SEEDS ARMS [accuracy.py args...]
#   bench/accuracy_parallel.sh /tmp/out gpu256 8 480 0,1,2 long-es,lite2-long-es --size 256 --test
set -uo pipefail
if [ $# -lt 6 ]; then
    sed -n 2,9p "$0" >&2
    exit 2
fi
out=$1 tag=$2 jobs=$3 deadline=$4 seeds=$5 arms=$6
shift 6
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
work=${WORK:-$(mktemp -d)}
data=${DATA:-$work/data}
mkdir -p "$out" "$work/logs"
start=$(date +%s)
export start deadline python here work data tag
categories=$("$python" -c "from memkd.datasets import SYNTH_CATEGORIES as C; print(' '.join(C))")

# The data every fit reads, written once before any fit starts (fits would race to write it).
for cat in $categories; do
    "$python" - "$cat" "$data" <<'EOF' &
import os, sys
from pathlib import Path
sys.path.insert(0, os.environ["here"])
import accuracy
cat, data = sys.argv[1], Path(sys.argv[2])
accuracy._data(data, cat, accuracy.TRAIN_SEED, 60, 12, 24)
accuracy._data(data, cat, accuracy.VAL_SEED, 1, accuracy.VAL_GOOD, accuracy.VAL_BAD)
EOF
done
wait

# One line per fit, seeds outermost, so a deadline cuts whole seeds from the end.
variants() { "$python" -c "import sys; sys.path.insert(0, '$here'); import accuracy; print(' '.join(accuracy.ARMS['$1'][2]))"; }
list=$work/fits.txt
: >"$list"
for seed in ${seeds//,/ }; do
    for arm in ${arms//,/ }; do
        for cat in $categories; do
            for variant in $(variants "$arm"); do
                echo "$arm $variant $cat $seed" >>"$list"
            done
        done
    done
done

run_fit() {
    set -- $1
    if [ $(( $(date +%s) - start )) -ge "$deadline" ]; then
        echo "skipped (deadline): $*" >&2
        return 0
    fi
    "$python" "$here/accuracy.py" --arms "$1" --variants "$2" --categories "$3" --seeds "$4" \
        --tag "$tag-$1-$2-$3-$4" --results "$work/fits" --data "$data" $extra \
        >"$work/logs/$1-$2-$3-$4.log" 2>&1 || echo "failed: $* (log: $1-$2-$3-$4.log)" >&2
}
export -f run_fit
export extra="$*"
# HARD_S (seconds from the start) kills fits still running, so the merge below always runs.
tr '\n' '\0' <"$list" | timeout "${HARD_S:-86400}" xargs -0 -P "$jobs" -I{} bash -c 'run_fit "$@"' _ {}

# Merge the per-fit CSVs (one header) and pack the per-fit scores and logs.
"$python" - "$work/fits" "$out/$tag.csv" <<'EOF'
import csv, sys
from pathlib import Path
rows = [r for p in sorted(Path(sys.argv[1]).glob("*.csv")) for r in csv.DictReader(open(p))]
if rows:
    with open(sys.argv[2], "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
print(f"{len(rows)} fits merged into {sys.argv[2]}")
EOF
(cd "$work/fits" 2>/dev/null && tar czf "$out/$tag-npz.tgz" --exclude='*.csv' --exclude='*.md' .)
tar czf "$out/$tag-logs.tgz" -C "$work" logs fits.txt
echo "done in $(( $(date +%s) - start )) s"
