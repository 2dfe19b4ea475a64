# Sourced by setup.sh and test.sh: apt-install whichever of the given Debian packages are
# missing, keeping their services from starting (lab nodes run their own sshd on port
# 22; the tests start their own PostgreSQL). Usage: apt_install_missing WHAT PKG...
apt_install_missing() {
  local what=$1 p
  shift
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing $what: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  # The package lists may be missing or stale on a fresh machine: update and retry.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
  rm -f /usr/sbin/policy-rc.d
  trap - EXIT
}
