# Shared by the shell entry points in scripts/: sourced, never run.
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# fail STEP WHAT-TO-DO: one line naming the failed set-up step and the way out, then exit non-zero.
fail() {
  echo "$(basename "$0"): $1 failed: $2" >&2
  exit 1
}

# Install Debian packages. apt-get update runs only when apt does not know a package yet (fresh machines ship
# without package lists), since it is slow.
apt_install() {
  if [[ $EUID -ne 0 ]]; then
    echo "need root to apt-get install $*" >&2
    return 1
  fi
  local pkg
  for pkg in "$@"; do
    if ! apt-cache policy "$pkg" 2>/dev/null | grep -q 'Candidate: [^(]'; then
      apt-get update -qq
      break
    fi
  done
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# need COMMAND PACKAGE: install PACKAGE when COMMAND is not on the PATH, or stop with one line saying so.
need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  apt_install "$2" || fail "installing $2 (for $1)" "run: apt-get update && apt-get install -y $2"
  command -v "$1" >/dev/null 2>&1 || fail "installing $2" "apt-get installed $2 but $1 is still not on the PATH"
}

# docker_engine: make sure the Docker engine answers, as scripts/services.sh docker does (it installs docker.io
# when dockerd or docker is missing, and starts the engine when it is not running). Its messages go to stderr.
docker_engine() {
  docker info >/dev/null 2>&1 && return 0
  bash "$(dirname "${BASH_SOURCE[0]}")/services.sh" docker >&2 \
    || fail "starting the Docker engine" "see the lines above; scripts/services.sh docker installs and starts it"
}

# Print the first mirror URI that apt uses for SUITE (argument 1), reading both
# one-line .list files and deb822 .sources files. Prints nothing if none.
apt_mirror_for() {
  local suite="$1" f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -r $f ]] || continue
    # deb [options] URI SUITE COMPONENTS...
    awk -v s="$suite" '$1 == "deb" {
        i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
        if ($(i + 1) == s) { print $i; exit }
      }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -r $f ]] || continue
    # One stanza per paragraph; skip disabled ones and deb-src-only ones.
    awk -v s="$suite" 'BEGIN { RS = "" } {
        types = ""; uri = ""; suites = ""; enabled = "yes"
        n = split($0, lines, "\n")
        for (j = 1; j <= n; j++) {
          l = lines[j]; if (l ~ /^#/) continue
          k = tolower(l); sub(/:.*/, "", k); v = l; sub(/^[^:]*:[ \t]*/, "", v)
          if (k == "types") types = v
          else if (k == "uris") { split(v, u, /[ \t]+/); uri = u[1] }
          else if (k == "suites") suites = v
          else if (k == "enabled") enabled = tolower(v)
        }
        if (enabled != "no" && (" " types " ") ~ / deb / && (" " suites " ") ~ (" " s " ")) { print uri; exit }
      }' "$f"
  done
}

# remove_build_dir DIR: remove a build folder. debootstrap mounts /proc and /sys inside its root; if it was
# interrupted they may still be mounted, and rm must never walk into them.
remove_build_dir() {
  [[ -n $1 && -d $1 ]] || return 0
  local m
  awk -v w="$1" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r |
    while read -r m; do umount -l "$m" 2>/dev/null || true; done
  rm -rf --one-file-system "$1"
}

# debian_base_available: true when debian:bookworm-slim is here or can be pulled, so a Dockerfile can be built the
# normal way. A missing registry fails in well under a second; a slow one is given 60 s.
debian_base_available() {
  docker image inspect debian:bookworm-slim >/dev/null 2>&1 && return 0
  timeout 60 docker pull -q debian:bookworm-slim >/dev/null 2>&1
}
