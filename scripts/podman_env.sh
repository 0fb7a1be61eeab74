# Sourced by scripts/build_images.sh and scripts/container_e2e.sh: containers without a Docker
# engine, as root, on a machine of the CI kind (hybrid cgroups, no systemd, no registry):
# podman with runc, cgroupfs, the host's network namespace and ulimits it may set.
# Exports CONTAINERS_CONF and IMAGE_CACHE (the Debian base's rootfs is kept there).
IMAGE_CACHE=${DISTILLERY_IMAGE_CACHE:-/var/cache/distillery-images}
mkdir -p "$IMAGE_CACHE"
export IMAGE_CACHE

if ! command -v podman >/dev/null || ! command -v mmdebstrap >/dev/null || ! command -v runc >/dev/null; then
  echo "installing podman, runc and mmdebstrap (Debian packages)..." >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    podman buildah runc conmon catatonit uidmap fuse-overlayfs slirp4netns \
    containernetworking-plugins mmdebstrap >/dev/null
fi

# crun fails on hybrid cgroups here and the default ulimits fail on setrlimit.
export CONTAINERS_CONF="$IMAGE_CACHE/containers.conf"
cat >"$CONTAINERS_CONF" <<'CONF'
[containers]
netns = "host"
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
