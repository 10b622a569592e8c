#!/usr/bin/env bash
# Every benchmark in benchmarks/, against the demo's local services. Called by `make bench`.
set -euo pipefail
uv run kap services up
for bench in benchmarks/*.py; do
  printf '\n\033[1m==> %s\033[0m\n' "$bench"
  uv run python "$bench"
done
