#!/usr/bin/env bash
# memkd-stream demo: train line A, stream its test images through one worker, show the verdicts.
#
# `make demo` runs this with the local Kafka + Redis up (and stops them afterwards if it started
# them; `KEEP_SERVICES=1 make demo` keeps them). Everything this script starts (the worker) it
# stops on exit, success or not. Each run uses its own topics (memkd.demo-<time>.*) and consumer
# group, so runs never see each other's records; the topics are deleted on exit unless
# KEEP_TOPICS=1. The model is published to Redis as the next version of line A (it stays).
#
# Knobs (environment): DEMO_OUT (./demo-out), DEMO_CATEGORY (brick), DEMO_STEPS (200),
# DEMO_INPUT_SIZE (128: a 4x cheaper step than 256, so a real schedule fits in a minute on a
# CPU), DEMO_BACKBONE (tf_efficientnet_lite2, fit's default: 20 of 20 where lite0 gets 18, in
# the same time), DEMO_TIMEOUT_S (300), KEEP_TOPICS (0).
set -euo pipefail

cd "$(dirname "$0")/../.."
VENV=${VENV:-.venv}
PY=${PY:-$VENV/bin/python}
CLI="$VENV/bin/memkd-stream"
WORKER="$VENV/bin/memkd-worker"
OUT=${DEMO_OUT:-demo-out}
CATEGORY=${DEMO_CATEGORY:-brick}
STEPS=${DEMO_STEPS:-200}
INPUT_SIZE=${DEMO_INPUT_SIZE:-128}
BACKBONE=${DEMO_BACKBONE:-tf_efficientnet_lite2}
TIMEOUT_S=${DEMO_TIMEOUT_S:-300}
KEEP_TOPICS=${KEEP_TOPICS:-0}
RUN="demo-$(date -u +%Y%m%d-%H%M%S)"

# The addresses actually used (the settings' defaults when unset), for the closing hints.
export MEMKD_KAFKA__BOOTSTRAP_SERVERS=${MEMKD_KAFKA__BOOTSTRAP_SERVERS:-127.0.0.1:39092}
export MEMKD_REDIS__URL=${MEMKD_REDIS__URL:-redis://127.0.0.1:36379/0}

export MEMKD_KAFKA__INSPECT_TOPIC="memkd.$RUN.inspect"
export MEMKD_KAFKA__RESULTS_TOPIC="memkd.$RUN.results"
export MEMKD_KAFKA__DLQ_TOPIC="memkd.$RUN.inspect.dlq"
export MEMKD_KAFKA__GROUP_ID="memkd-$RUN"
export MEMKD_MODEL__DEVICE=${MEMKD_MODEL__DEVICE:-auto}
export MEMKD_MODEL__BACKBONE=$BACKBONE  # the worker readies this teacher: line A's
export MEMKD_WORKER__PRELOAD_LINES=A
export MEMKD_WORKER__WORKER_ID="$RUN"
export MEMKD_LOG__FORMAT=${MEMKD_LOG__FORMAT:-console}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# Deletes this run's three topics (best effort, short timeouts: a dead broker must not hang exit).
delete_topics() {
  "$PY" - <<'PYEOF' || echo "could not delete the topics memkd.$RUN.* (delete them by hand)" >&2
from memkd_stream.broker.clients import make_admin
from memkd_stream.broker.topics import topic_names
from memkd_stream.settings import load_settings

kafka = load_settings().kafka
try:
    admin = make_admin(kafka, client_id="memkd-demo-cleanup", timeout_s=5)
    try:
        existing = set(admin.list_topics())
        names = [t for t in topic_names(kafka) if t in existing]
        if names:
            admin.delete_topics(names)
            print("deleted the demo topics:", ", ".join(names))
    finally:
        admin.close()
except Exception as exc:  # one line, not a traceback, on the way out
    raise SystemExit(f"{type(exc).__name__}: {exc}") from None
PYEOF
}

worker_pid=""
topics_made=0
cleaned=0
cleanup() {
  local rc=$?
  [ "$cleaned" = 1 ] && exit "$rc"  # INT/TERM run this, then EXIT runs it again
  cleaned=1
  if [ -n "$worker_pid" ] && kill -0 "$worker_pid" 2>/dev/null; then
    echo "stopping the worker (SIGTERM, pid $worker_pid)"
    kill -TERM "$worker_pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$worker_pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$worker_pid" 2>/dev/null || true
    wait "$worker_pid" 2>/dev/null || true
  fi
  if [ "$topics_made" = 1 ]; then
    if [ "$KEEP_TOPICS" = 1 ]; then
      echo "the topics memkd.$RUN.* stay (KEEP_TOPICS=1)"
    else
      delete_topics
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT INT TERM

mkdir -p "$OUT"
started=$(date +%s)

step "1/6 topics ($MEMKD_KAFKA__INSPECT_TOPIC, results, dlq) on $MEMKD_KAFKA__BOOTSTRAP_SERVERS"
topics_made=1
"$CLI" topics create --partitions 3

step "2/6 synthetic data: category '$CATEGORY' -> $OUT/data"
"$CLI" data synth --out "$OUT/data" --category "$CATEGORY" --n-train 48 --n-test-good 8 \
  --n-test-bad 12 --size 256 --overwrite
DATA="$OUT/data/$CATEGORY"

step "3/6 fit line A (${BACKBONE#tf_efficientnet_}, $STEPS steps, ${INPUT_SIZE}px) and publish it to Redis"
"$CLI" fit --line A --data "$DATA" --backbone "$BACKBONE" --steps "$STEPS" \
  --input-size "$INPUT_SIZE" --batch-size 8 --out "$OUT/A.safetensors" --force  # show this model

step "4/6 start one worker"
port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export MEMKD_METRICS__PORT=$port MEMKD_METRICS__HOST=127.0.0.1
"$WORKER" >"$OUT/worker.log" 2>&1 &
worker_pid=$!
ready=0
for _ in $(seq 1 240); do
  if ! kill -0 "$worker_pid" 2>/dev/null; then
    echo "the worker exited; its log:" >&2; tail -n 30 "$OUT/worker.log" >&2; exit 1
  fi
  if "$PY" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/readyz', timeout=1)" 2>/dev/null; then
    ready=1; break
  fi
  sleep 0.5
done
[ $ready = 1 ] || { echo "worker not ready after 120 s; log: $OUT/worker.log" >&2; exit 1; }
echo "worker ready (pid $worker_pid; metrics http://127.0.0.1:$port/metrics; log $OUT/worker.log)"

step "5/6 produce the test images of '$CATEGORY' (good and defective) as line A"
count=$(find "$DATA/test" -type f -name '*.png' | wc -l)
"$CLI" produce --line A "$DATA/test" --id-from-filename --id-prefix "$RUN/"

step "6/6 results (streamed scores vs ground truth)"
"$PY" deploy/local/demo_report.py --data "$DATA" --expect "$count" --id-prefix "$RUN/" \
  --out "$OUT" --timeout "$TIMEOUT_S"

echo
echo "demo done in $(( $(date +%s) - started ))s (Kafka $MEMKD_KAFKA__BOOTSTRAP_SERVERS, Redis $MEMKD_REDIS__URL)."
echo "Overlays and summary.json: $OUT/. Line A stays published in Redis: $CLI lines show A"
if [ "$KEEP_TOPICS" = 1 ]; then
  echo "Read the results again (topics kept):"
  echo "  MEMKD_KAFKA__BOOTSTRAP_SERVERS=$MEMKD_KAFKA__BOOTSTRAP_SERVERS MEMKD_KAFKA__RESULTS_TOPIC=$MEMKD_KAFKA__RESULTS_TOPIC $CLI results"
else
  echo "This run's topics (memkd.$RUN.*) are deleted now. To keep them and the services, and read"
  echo "the results yourself: KEEP_TOPICS=1 KEEP_SERVICES=1 make demo, then"
  echo "  MEMKD_KAFKA__BOOTSTRAP_SERVERS=$MEMKD_KAFKA__BOOTSTRAP_SERVERS MEMKD_KAFKA__RESULTS_TOPIC=memkd.demo-<time>.results $CLI results"
fi
echo "If make demo started Kafka and Redis, it stops them after the demo (KEEP_SERVICES=1 make demo,"
echo "or make services-up beforehand, keeps them running)."
