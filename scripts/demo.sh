#!/usr/bin/env bash
# The main job, end to end, as a readable script of stages. Called by `make demo` after set-up.
# Each later stage of kap (ingest, self-play, curation, training, explorer) adds its step here.
set -euo pipefail

stage() { printf '\n\033[1;36m[%s] %s\033[0m\n' "$1" "$2"; }
kap() { uv run --frozen kap "$@"; }
# logged LOG CMD...: the command's stderr (progress logs) into LOG; on failure, its tail.
logged() {
  local log="$1" rc=0
  shift
  "$@" 2>"$log" || rc=$?
  if [ "$rc" -ne 0 ]; then
    tail -n 40 "$log" >&2
    echo "error: '$*' failed (exit $rc); its log: $log" >&2
    exit "$rc"
  fi
}

stage 1 "local services: Neo4j, PostgreSQL, Redis"
kap services up

stage 2 "PostgreSQL schema (Alembic)"
kap db upgrade

stage 3 "Neo4j schema: constraints and full-text indexes"
kap graph schema

stage 4 "ingest the MuSiQue corpus (1,890 Wikipedia paragraphs) into the KAG"
musique="${KAP_DEMO_CORPUS:-../shared/data/musique/corpus.json}"
if [ -f "$musique" ]; then
  kap ingest "$musique" --domain musique
  kap graph stats --domain musique
  kap graph sample --domain musique --hops 2 --n 3 --seed 1
  # Embedding ~2,000 chunks on a CPU takes a minute or two, once: later builds embed only
  # the chunks the index lacks (and `kap ingest` does that itself when an index exists).
  kap index build --domain musique
  kap index verify --domain musique
  kap evidence search "Which state borders Tennessee to the east?" --domain musique -k 5
else
  echo "no corpus at $musique (set KAP_DEMO_CORPUS); skipping ingestion"
fi

stage 5 "a query on each store: RETURN 1, SELECT 1, PING"
kap services check

stage 6 "self-play: a Celery round trip, then a small campaign through a real worker"
home="$(kap services status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["state_dir"])')"
worker_log="$home/logs/worker.log"
# Run the worker's own executable, not through `uv run`, so that $! is the worker itself.
.venv/bin/kap worker --concurrency 2 >"$worker_log" 2>&1 &
worker_pid=$!
trap 'kill "$worker_pid" 2>/dev/null || true; wait "$worker_pid" 2>/dev/null || true' EXIT
kap queue ping --timeout 120
if [ -f "$musique" ]; then
  # propose (relation chains, five criteria) -> 2 x solve (scripted policy, real tools) ->
  # verify -> record (trajectories in PostgreSQL, action records in Neo4j)
  kap campaign run configs/campaigns/search-small.yaml --wait
  cat <<MSG
The trajectories: uv run kap campaign status ID  (ID above), or in SQL, e.g.
  SELECT t.question, tr.final_answer, v.correct, tr.n_turns FROM trajectories tr
    JOIN tasks t ON t.id = tr.task_id JOIN verdicts v ON v.trajectory_id = tr.id;
MSG
fi
kill "$worker_pid"; wait "$worker_pid" 2>/dev/null || true
trap - EXIT
echo "worker stopped (its log: $worker_log)"

stage 7 "training: SFT -> two GRPO domain teachers -> multi-teacher distillation (tiny, CPU)"
# Curated datasets come with the curation stage; until then SFT reads tool-using conversations
# built from the MuSiQue paragraphs. Each stage leaves <output_dir>/model for the next one; the
# runs and their curves go to PostgreSQL (training_runs, run_metrics). About five minutes.
runs="$home/runs"
rm -rf "$runs"  # a fresh chain every time (SFT would otherwise resume its finished run)
mkdir -p "$runs"
uv run --frozen python -m kap.training.demo_data "$runs/conversations.jsonl" 240 >/dev/null
logged "$runs/sft.log" kap train sft --config configs/train/sft-tiny.yaml \
  --set data="$runs/conversations.jsonl" --set output_dir="$runs/sft-tiny"
for domain in calculator mental; do
  calculator=$([ "$domain" = calculator ] && echo true || echo false)
  logged "$runs/teacher-$domain.log" kap train teacher --config configs/train/teacher-tiny.yaml \
    --set run.name="teacher-$domain" --set run.model="$runs/sft-tiny/model" \
    --set run.domain="$domain" --set toy.with_calculator="$calculator" \
    --set run.output_dir="$runs/teacher-$domain"
done
teachers="{calculator: $runs/teacher-calculator/model, mental: $runs/teacher-mental/model}"
logged "$runs/distill.log" kap train distill --config configs/train/distill-tiny.yaml \
  --set "distill.teachers=$teachers" --set run.model="$runs/sft-tiny/model" \
  --set run.output_dir="$runs/distill-tiny"
echo "models, metrics.jsonl and logs of each stage: $runs"

stage 8 "where everything is"
kap services status
cat <<MSG

State, data, logs and generated passwords live in $home (KAP_HOME moves it).
Connection facts for scripts:  uv run kap services status --json
Stop everything:               uv run kap services down
MSG
