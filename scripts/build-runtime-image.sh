#!/usr/bin/env bash
# Build the job runtime image (Debian bookworm + python3 + nodejs, user runner 10001).
#
#   scripts/build-runtime-image.sh [--force] [--offline] [IMAGE]
#
# IMAGE defaults to $JOB_RUNTIME_IMAGE, then infra-ainode-runtime:bookworm-2.
# If the image already exists this does nothing, unless --force.
#
# Where a registry answers, runtime/Dockerfile is built with `docker build`.
# Our machines have none, so the usual path is offline: a minbase Debian root
# made with debootstrap from the apt mirror, then `docker import`.
# --offline skips the registry attempt.
set -euo pipefail
# Functions below run inside $(...); without this, bash drops -e there.
shopt -s inherit_errexit

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "$REPO_ROOT/scripts/lib.sh"
SUITE=bookworm
RUNNER_UID=10001
FORCE=0
OFFLINE=0
IMAGE=""

usage() { sed -n '2,12s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

while (($#)); do
  case "$1" in
    --force) FORCE=1 ;;
    --offline) OFFLINE=1 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    *) IMAGE="$1" ;;
  esac
  shift
done
IMAGE="${IMAGE:-${JOB_RUNTIME_IMAGE:-infra-ainode-runtime:bookworm-2}}"

log() { printf '[build-runtime-image +%ss] %s\n' "$SECONDS" "$*"; }

docker_engine
if [[ $FORCE -eq 0 ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  log "$IMAGE already exists; nothing to do (use --force to rebuild)"
  exit 0
fi

# True when runtime/Dockerfile can be built the normal way (not --offline, and
# the base image is here or can be pulled).
can_docker_build() {
  [[ $OFFLINE -eq 0 ]] && debian_base_available
}

WORK=""
# The step under way whose failure the exit trap names (step, what to do), as `fail` would.
FAILING_STEP=()
cleanup() {
  local status=$?
  if ((status != 0 && ${#FAILING_STEP[@]})); then
    echo "$(basename "$0"): ${FAILING_STEP[0]} failed: ${FAILING_STEP[1]}" >&2
  fi
  remove_build_dir "$WORK"
}
trap cleanup EXIT
# Make Ctrl-C and kill run the cleanup too.
trap 'exit 130' INT TERM HUP

# Build with runtime/Dockerfile; prints the image id.
build_with_dockerfile() {
  docker build --pull=false --iidfile "$WORK/iid" "$REPO_ROOT/runtime" >&2
  cat "$WORK/iid"
}

# Build offline with debootstrap + docker import; prints the image id.
build_with_debootstrap() {
  local root="$WORK/rootfs" mirror security
  mirror="$(apt_mirror_for "$SUITE" | head -n1)"
  mirror="${DEBIAN_MIRROR:-${mirror:-http://deb.debian.org/debian}}"
  security="$(apt_mirror_for "$SUITE-security" | head -n1)"

  need debootstrap debootstrap >&2
  log "debootstrap $SUITE from $mirror (takes a few minutes)" >&2
  debootstrap --variant=minbase --include=python3,nodejs "$SUITE" "$root" "$mirror" \
    >"$WORK/debootstrap.log" 2>&1 || {
      tail -n 30 "$WORK/debootstrap.log" >&2
      [[ -f $root/debootstrap/debootstrap.log ]] && tail -n 30 "$root/debootstrap/debootstrap.log" >&2
      return 1
    }
  log "debootstrap done" >&2

  # debootstrap installs from the release suite only; the Dockerfile path gets
  # -updates and -security fixes, so give the offline image the same. This
  # image runs untrusted code. A failure here only warns: the release-suite
  # root is still a working image.
  {
    echo "deb $mirror $SUITE main"
    echo "deb $mirror $SUITE-updates main"
    if [[ -n $security ]]; then echo "deb $security $SUITE-security main"; fi
  } >"$root/etc/apt/sources.list"
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  if chroot "$root" env DEBIAN_FRONTEND=noninteractive sh -c \
       'apt-get -qq update && apt-get -qq -y upgrade' >"$WORK/upgrade.log" 2>&1; then
    log "applied $SUITE-updates/-security: $(grep -c '^Setting up' "$WORK/upgrade.log" || true) package(s)" >&2
  else
    log "warning: upgrade from $SUITE-updates/-security failed; image has $SUITE release packages only" >&2
    tail -n 10 "$WORK/upgrade.log" >&2
  fi

  # The job user. Written directly rather than with useradd, so nothing else
  # in the root (lastlog, home skeleton) changes.
  echo "runner:x:$RUNNER_UID:$RUNNER_UID:job runner:/job:/usr/sbin/nologin" >>"$root/etc/passwd"
  echo "runner:x:$RUNNER_UID:" >>"$root/etc/group"
  [[ -f $root/etc/shadow ]] && echo "runner:!:19000::::::" >>"$root/etc/shadow"
  [[ -f $root/etc/gshadow ]] && echo "runner:!::" >>"$root/etc/gshadow"
  install -d -o "$RUNNER_UID" -g "$RUNNER_UID" -m 0755 "$root/job"

  # Keep it small. Docs, man pages and translations are never read in a job;
  # the dpkg excludes keep them out of anything installed on top later (the
  # same trick as Debian's slim images). C.UTF-8 is built into glibc.
  rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* \
         "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
         "$root"/usr/share/locale/* "$root"/usr/share/lintian "$root"/usr/share/linda \
         "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old \
         "$root"/var/log/* "$root"/debootstrap
  cat >"$root/etc/dpkg/dpkg.cfg.d/01-infra-ainode-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
  # Docker supplies these at run time; do not bake in the build host's.
  : >"$root/etc/resolv.conf"
  : >"$root/etc/hostname"
  [[ -f $root/etc/machine-id ]] && : >"$root/etc/machine-id"

  log "importing into docker" >&2
  # Numeric owners: the host's user names must not leak into the image's.
  # /dev, /proc and /sys are provided by the container runtime.
  tar -C "$root" --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -c . |
    docker import \
      --change "USER $RUNNER_UID:$RUNNER_UID" \
      --change 'WORKDIR /job' \
      --change 'ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 LANG=C.UTF-8' \
      --change 'CMD ["python3"]' \
      --message "infra-ainode runtime: debootstrap $SUITE minbase + python3 + nodejs" \
      - | sed 's/^sha256://'
}

# Both checks run with no network, as jobs do.
verify() {
  local image="$1" out uid
  out="$(docker run --rm --network none "$image" \
           python3 -c 'import json,http.client,socket,ssl; print("ok")')"
  [[ $out == ok ]] || { echo "verify: python3 check printed '$out'" >&2; return 1; }
  out="$(docker run --rm --network none "$image" \
           node -e 'require("http"); require("net"); console.log("ok")')"
  [[ $out == ok ]] || { echo "verify: node check printed '$out'" >&2; return 1; }
  uid="$(docker run --rm --network none "$image" id -u)"
  [[ $uid == "$RUNNER_UID" ]] || { echo "verify: id -u is '$uid', want $RUNNER_UID" >&2; return 1; }
}

START=$SECONDS
WORK="$(mktemp -d /var/tmp/infra-ainode-runtime.XXXXXX)"

# Build untagged and tag only after verifying, so that a broken build is never
# taken for a finished one by the idempotency check on the next run.
IID=""
if can_docker_build; then
  log "base image available; building $REPO_ROOT/runtime/Dockerfile"
  IID="$(build_with_dockerfile)" || { log "docker build failed; falling back to debootstrap"; IID=""; }
else
  log "no registry reachable (docker pull debian:bookworm-slim failed); building offline"
fi
if [[ -z $IID ]]; then
  # Not `IID=... || fail`: bash ignores -e inside a command on the left of ||, so a failed step would go unseen.
  FAILING_STEP=("building $IMAGE offline (debootstrap, docker import)"
                "see the lines above; DEBIAN_MIRROR=URL picks another Debian mirror")
  IID="$(build_with_debootstrap)"
  FAILING_STEP=()
fi

log "verifying $IID"
if ! verify "$IID"; then
  docker image rm "$IID" >/dev/null 2>&1 || true
  fail "verifying $IMAGE" "the image was removed; see the lines above, then run with --force --offline"
fi
OLD_IID="$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
docker tag "$IID" "$IMAGE"
# After --force the previous build would linger as an untagged image; drop it
# unless something still uses it (docker refuses, and that is fine).
if [[ -n $OLD_IID && $OLD_IID != *"$IID"* ]]; then
  docker image rm "$OLD_IID" >/dev/null 2>&1 || true
fi
log "built $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{ printf "%.1f MB", $1 / 1e6 }')) in $((SECONDS - START)) s"
