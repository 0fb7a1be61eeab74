#!/usr/bin/env bash
# Installs what the tests need, starts Postgres and Redis if they are not running, runs the tests.
# Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

# --- Python environment (torch first: the CPU build; a range in pyproject keeps it) ---------
if [ ! -x .venv/bin/python ]; then
  python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
fi
. .venv/bin/activate
python -c "import torch" 2>/dev/null || pip install -q torch==2.13.0
pip install -q -e ".[platform,onnx,test]"

# --- docker-compose (v1) validates the compose file offline; no engine needed ----------------
if ! command -v docker-compose >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-compose) >/dev/null 2>&1 \
    || echo "warning: could not install docker-compose; the compose check will fail" >&2
fi

# --- services the tests use ------------------------------------------------------------------
if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
  for _ in $(seq 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 1; done
fi
# The S3 server (seaweedfs `weed`, from PyPI) is started by the test fixtures (tests/support/devstack.py).

export WANDB_MODE=offline WANDB_SILENT=true
ruff check . && ruff format --check . && lint-imports
exec python -m pytest "$@"
