#!/usr/bin/env bash
# Record every book-scale run the book displays, resumably: each seed is one chunk,
# written into its record (and committed with --commit) as soon as it finishes, and a
# rerun skips the seeds a record already holds. Run from the repository root with the
# venv active. WORKERS=2 runs two queues that share the task list (one torch thread each).
#   bash tools/record_book.sh            # everything, one queue
#   WORKERS=2 bash tools/record_book.sh  # two queues
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
LOG=${LOG:-runs/record_book}
mkdir -p "$LOG"
TASKS="$LOG/tasks.txt"
LOCK="$LOG/tasks.lock"
SEEDS="0 1 2"
X="$PY -m kexue.experiments"

tasks() {
  # chapter 01: the pretraining-budget curve (random init, four regenerated budgets, the shipped encoder)
  echo "$PY -m kexue.experiments.ch01_budget --threads 1"
  for s in 0 250 500 1000 2000 3500; do
    echo "$X ch01_budget --profile book --set steps=$s --name ch01_budget_book_steps$s --seeds $SEEDS"
  done
  echo "$X 01 --profile book --seeds $SEEDS"
  for k in 5 20 50 100; do
    echo "$X 04 --profile smoke --set kappa=$k.0 --name ch04_vmf_smoke_kappa$k --seeds $SEEDS"
  done
  echo "$X 05 --profile book --seeds $SEEDS"
  echo "$X 03 --profile book --seeds $SEEDS"
  echo "$X 02 --profile book --seeds $SEEDS"
  echo "$X 06 --profile book --seeds $SEEDS"
  echo "$X 07 --profile book --seeds $SEEDS"
  echo "$X 07 --profile book --set small_batch=64 large_batch=512 micro_batch=64 --name ch07_accumulation_book_b64_512 --seeds $SEEDS"
  echo "$X 04 --profile book --seeds $SEEDS"
  echo "$X 04 --profile book --set dim=4 kappa=20.0 --name ch04_vmf_book_d4_kappa20 --seeds $SEEDS"
}

[ -s "$TASKS" ] || tasks > "$TASKS"

pop() {  # print and remove the first task, under a lock shared by the workers
  exec 9>"$LOCK"
  flock 9
  local line
  line=$(head -n 1 "$TASKS" || true)
  [ -n "$line" ] && sed -i '1d' "$TASKS"
  flock -u 9
  printf '%s' "$line"
}

worker() {
  local id=$1 task
  while task=$(pop) && [ -n "$task" ]; do
    echo "[$(date +%T)] worker $id: $task" | tee -a "$LOG/worker$id.log"
    # shellcheck disable=SC2086
    KEXUE_PROGRESS=0 $task --threads 1 --commit >>"$LOG/worker$id.log" 2>&1 \
      || echo "[$(date +%T)] worker $id FAILED: $task" | tee -a "$LOG/worker$id.log"
  done
}

for i in $(seq 1 "${WORKERS:-1}"); do worker "$((i + ${WORKER_OFFSET:-0}))" & done
wait
