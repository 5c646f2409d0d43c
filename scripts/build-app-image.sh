#!/usr/bin/env bash
# Build the application image (web, worker, beat) from the top-level Dockerfile.
#
#   scripts/build-app-image.sh [--offline] [--force-base] [IMAGE]
#
# IMAGE defaults to $APP_IMAGE, then infra-ainode:local. Where a registry answers, this is `docker build .`.
# Our machines have none, so the usual path is offline: a base made with debootstrap (Debian bookworm minbase,
# python3, a venv at /opt/venv with requirements.txt installed from PyPI), `docker import`ed as
# infra-ainode-app-base:<hash of requirements.txt>, then the same Dockerfile built on top of it with
# --build-arg BASE=... The base is built once per requirements.txt; --force-base builds it again.
# --offline skips the registry attempt.
set -euo pipefail
shopt -s inherit_errexit

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "$REPO_ROOT/scripts/lib.sh"
SUITE=bookworm
OFFLINE=0
FORCE_BASE=0
IMAGE=""

usage() { sed -n '2,12s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

while (($#)); do
  case "$1" in
    --offline) OFFLINE=1 ;;
    --force-base) FORCE_BASE=1 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    *) IMAGE="$1" ;;
  esac
  shift
done
IMAGE="${IMAGE:-${APP_IMAGE:-infra-ainode:local}}"
BASE_IMAGE="infra-ainode-app-base:$SUITE-$(sha256sum "$REPO_ROOT/requirements.txt" | cut -c1-12)"

log() { printf '[build-app-image +%ss] %s\n' "$SECONDS" "$*" >&2; }

docker_engine

# The legacy builder takes a local FROM image as it is; BuildKit (when installed) does too with --pull=false.
docker_build() {
  docker build --pull=false "$@" "$REPO_ROOT" >&2
}

can_docker_build() {
  [[ $OFFLINE -eq 0 ]] && debian_base_available
}

WORK=""
cleanup() { remove_build_dir "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# debootstrap a bookworm root with python3 and a venv holding the requirements; import it as BASE_IMAGE.
build_base() {
  local root="$WORK/rootfs" mirror security
  mirror="$(apt_mirror_for "$SUITE" | head -n1)"
  mirror="${DEBIAN_MIRROR:-${mirror:-http://deb.debian.org/debian}}"
  security="$(apt_mirror_for "$SUITE-security" | head -n1)"
  need debootstrap debootstrap >&2
  log "debootstrap $SUITE from $mirror (takes a few minutes)"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$SUITE" "$root" "$mirror" \
    >"$WORK/debootstrap.log" 2>&1 || { tail -n 30 "$WORK/debootstrap.log" >&2; return 1; }
  {
    echo "deb $mirror $SUITE main"
    echo "deb $mirror $SUITE-updates main"
    if [[ -n $security ]]; then echo "deb $security $SUITE-security main"; fi
  } >"$root/etc/apt/sources.list"
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  if chroot "$root" env DEBIAN_FRONTEND=noninteractive sh -c \
       'apt-get -qq update && apt-get -qq -y upgrade' >"$WORK/upgrade.log" 2>&1; then
    log "applied $SUITE-updates/-security"
  else
    log "warning: upgrade from $SUITE-updates/-security failed; the base has $SUITE release packages only"
  fi
  # pip inside the root trusts what the host's pip trusts (a proxy's CA, if the host has one).
  local ca="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
  cp "$ca" "$root/tmp/host-ca.crt"
  cp "$REPO_ROOT/requirements.txt" "$root/tmp/requirements.txt"
  log "installing requirements.txt into /opt/venv from PyPI"
  chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 sh -c \
    'python3 -m venv /opt/venv && /opt/venv/bin/pip install -q --no-cache-dir --disable-pip-version-check \
       --cert /tmp/host-ca.crt -r /tmp/requirements.txt' >"$WORK/pip.log" 2>&1 \
    || { tail -n 30 "$WORK/pip.log" >&2; return 1; }
  rm -f "$root/tmp/host-ca.crt" "$root/tmp/requirements.txt"
  find "$root/opt/venv" -name __pycache__ -type d -prune -exec rm -rf {} +
  rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* \
         "$root"/usr/share/info/* "$root"/usr/share/locale/* "$root"/var/log/* "$root"/debootstrap
  : >"$root/etc/resolv.conf"
  : >"$root/etc/hostname"
  [[ -f $root/etc/machine-id ]] && : >"$root/etc/machine-id"
  log "importing $BASE_IMAGE"
  tar -C "$root" --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -c . |
    docker import --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["python3"]' --message "infra-ainode app base: debootstrap $SUITE + venv" - "$BASE_IMAGE" >/dev/null
}

verify() {
  local out
  out="$(docker run --rm --network none --entrypoint python "$IMAGE" -c \
    'import sys, django, celery, gunicorn, prometheus_client, psycopg; print(sys.version_info[:2] == (3, 11))')"
  [[ $out == True ]] || { echo "verify: the image's Python check printed '$out'" >&2; return 1; }
  out="$(docker run --rm --network none --entrypoint id "$IMAGE" -u)"
  [[ $out == 10002 ]] || { echo "verify: the image runs as uid '$out', want 10002" >&2; return 1; }
}

WORK="$(mktemp -d /var/tmp/infra-ainode-app.XXXXXX)"
if can_docker_build; then
  log "base image available; docker build $REPO_ROOT"
  docker_build -t "$IMAGE"
else
  log "no registry reachable; building offline on $BASE_IMAGE"
  if [[ $FORCE_BASE -eq 1 ]] || ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    build_base
  fi
  docker_build --build-arg "BASE=$BASE_IMAGE" -t "$IMAGE"
fi
verify
log "built $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{ printf "%.1f MB", $1 / 1e6 }'))"
