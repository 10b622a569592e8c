#!/usr/bin/env bash
# The whole suite: lint, then the test services, then pytest. Called by `make test`
# (which sets up the machine first and points KAP_* at the test state directory and ports).
# KEEP_SERVICES=1 leaves the test services running for a faster next run.
set -euo pipefail

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

say "ruff check"
uv run ruff check .
say "ruff format --check"
uv run ruff format --check .

say "mypy (strict for platform, graphstore, workers)"
uv run mypy

say "starting the test services (state in ${KAP_HOME})"
if [ "${KEEP_SERVICES:-0}" != 1 ]; then
  trap 'say "stopping the test services"; uv run kap services down || true' EXIT
fi
uv run kap services up

say "pytest"
set +e
uv run pytest "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
fi
exit $rc
