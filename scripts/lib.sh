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
