# shellcheck shell=bash
# need_debian_packages REASON PACKAGE... — install the Debian packages some tests need, saying which and
# why, with apt's progress lines visible (an install of buildah pulls about twenty packages and takes
# minutes; silence made it look hung). Sourced by scripts/test; call it once per tool a test needs:
#
#   need_debian_packages "the local builder's tests run buildah" buildah
#
# Already installed: says nothing. Missing and not root, or BRIDGE_TEST_INSTALL=no: prints the command to
# run and returns 0 — the tests that need the package then fail with their own message (they never skip).
need_debian_packages() {
  local reason=$1
  shift
  local missing=() pkg
  if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "== not a Debian system: install $* yourself ($reason)" >&2
    return 0
  fi
  for pkg in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("$pkg")
    fi
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "${BRIDGE_TEST_INSTALL:-yes}" = no ] || [ "$(id -u)" != 0 ]; then
    echo "== not installing ${missing[*]} ($reason): run  apt-get install -y ${missing[*]}  as root" >&2
    return 0
  fi
  echo "== apt-get install ${missing[*]}: $reason (set BRIDGE_TEST_INSTALL=no to skip)"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
  echo "== installed ${missing[*]}"
}
