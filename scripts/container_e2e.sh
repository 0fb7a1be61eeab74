#!/usr/bin/env bash
# The compose end-to-end test: builds the images (scripts/build_images.sh; the Debian base is
# cached), then runs docker-compose.yml + tests/deploy/compose.ci.yml under podman-compose and
# drives an experiment through the gateway (tests/deploy/test_container_e2e.py).
# Needs root, Debian (podman and mmdebstrap are apt-installed if missing) and the venv of
# scripts/test.sh. Usage: bash scripts/container_e2e.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] && . .venv/bin/activate
start=$SECONDS
bash scripts/build_images.sh
built=$SECONDS
. scripts/podman_env.sh
export DISTILLERY_CONTAINER_E2E=1 WANDB_MODE=offline WANDB_SILENT=true
status=0
python -m pytest tests/deploy/test_container_e2e.py -m container -s -q -p no:cacheprovider "$@" \
  || status=$?
echo "container e2e: images $((built - start))s, test $((SECONDS - built))s, total $((SECONDS - start))s"
exit $status
