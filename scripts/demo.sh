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

stage 7 "curation: SQL over the trajectories, a frozen dataset, export, audit, provenance"
runs="$home/runs"
rm -rf "$runs"  # a fresh chain every time (SFT would otherwise resume its finished run)
mkdir -p "$runs"
curated=""
if [ -f "$musique" ]; then
  # Queries run as the read-only role kap_curator (docs/curation.md has the cookbook).
  kap dataset query "SELECT domain, count(*) AS trajectories,
      round(avg(correct::int), 3) AS pass_rate, round(avg(n_turns), 1) AS mean_turns
    FROM curation.trajectory_summary GROUP BY domain"
  # One correct trajectory per task, the shortest; each run of the demo adds a version.
  version="$(kap dataset create demo-correct --json --sql "SELECT DISTINCT ON (task_id)
      trajectory_id FROM curation.trajectory_summary WHERE correct
      ORDER BY task_id, n_tokens, trajectory_id" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')"
  curated="demo-correct@$version"
  kap dataset show "$curated" --verify
  kap dataset export "$curated" --format jsonl "$runs/demo-correct.jsonl"
  kap dataset export "$curated" --format parquet "$runs/demo-correct.parquet"
  # The proposer wrote its questions from the MuSiQue corpus; are MuSiQue's own questions in
  # the conversations? (Retrieved passages are left out: they quote the corpus by design.)
  kap dataset audit "$curated" --against ../shared/data/musique/questions.json
  kap trace "$curated#0" >"$runs/trace.txt"  # (through a file: `| head` would SIGPIPE kap)
  head -n 40 "$runs/trace.txt"
fi

stage 8 "training: SFT -> two GRPO domain teachers -> multi-teacher distillation (tiny, CPU)"
# SFT reads tool-using conversations built from the MuSiQue paragraphs (a few hundred; the
# demo campaign's dataset is too small to teach a random model), then a short SFT on the
# frozen dataset shows a run recording its content hash. Each stage leaves <output_dir>/model
# for the next one; the runs and their curves go to PostgreSQL (training_runs, run_metrics).
# About five minutes.
uv run --frozen python -m kap.training.demo_data "$runs/conversations.jsonl" 240 >/dev/null
logged "$runs/sft.log" kap train sft --config configs/train/sft-tiny.yaml \
  --set data="$runs/conversations.jsonl" --set output_dir="$runs/sft-tiny"
if [ -n "$curated" ]; then
  logged "$runs/sft-curated.log" kap train sft --config configs/train/sft-tiny.yaml \
    --dataset "$curated" --set eval_fraction=0 --set eval_every=0 --set batch_size=4 \
    --set output_dir="$runs/sft-curated"
  kap dataset query "SELECT r.name, d.name || '@' || d.version AS dataset, r.dataset_hash,
      r.dataset_hash = d.content_hash AS hash_matches
    FROM training_runs r JOIN datasets d ON d.id = r.dataset_id
    ORDER BY r.created_at DESC LIMIT 1"
fi
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

stage 9 "the explorer: graph regions, trajectories, campaigns, curation, training"
# Served in the background (read-only role) until `kap services down` or the next demo.
ui_port="${KAP_UI_PORT:-8501}"
ui_pid_file="$home/ui.pid"
if [ -f "$ui_pid_file" ]; then kill "$(cat "$ui_pid_file")" 2>/dev/null || true; fi
nohup .venv/bin/kap ui --port "$ui_port" >"$home/logs/ui.log" 2>&1 &
echo $! >"$ui_pid_file"
ui_health() {
  python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
    "http://127.0.0.1:$ui_port/_stcore/health" 2>/dev/null
}
for _ in $(seq 60); do ui_health && break; sleep 1; done
ui_health || { tail -n 20 "$home/logs/ui.log" >&2; echo "error: the explorer did not start" >&2; exit 1; }

stage 10 "where everything is"
kap services status
cat <<MSG

State, data, logs and generated passwords live in $home (KAP_HOME moves it).
Connection facts for scripts:  uv run kap services status --json
Stop everything:               uv run kap services down; kill \$(cat $ui_pid_file)

The explorer is running: open http://127.0.0.1:$ui_port in a browser (on a remote machine,
first: ssh -L $ui_port:127.0.0.1:$ui_port THAT-MACHINE). Start it again any time with
  uv run kap ui --port $ui_port
Launching campaigns and saving datasets from it go through Celery: keep a worker running
(uv run kap worker) for those.
MSG
