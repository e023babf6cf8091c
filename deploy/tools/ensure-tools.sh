#!/usr/bin/env bash
# Installs the offline validators `make test` and `make k8s-render` need, when missing:
#   kustomize  `go install sigs.k8s.io/kustomize/kustomize/v5` into .local/tools/go/bin (needs Go)
#   promtool   Debian's `prometheus` package (apt-get; its service is never started)
# Prints nothing when both are present. Usage: deploy/tools/ensure-tools.sh [kustomize] [promtool]
set -euo pipefail
cd "$(dirname "$0")/../.."
KUSTOMIZE_VERSION=v5.7.1
GOBIN_DIR=$PWD/.local/tools/go/bin
wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=(kustomize promtool)

ensure_go() {
  command -v go >/dev/null 2>&1 && return
  [ -x /usr/local/go/bin/go ] && { export PATH=/usr/local/go/bin:$PATH; return; }
  echo "Go is missing: installing golang-go with apt-get" >&2
  apt_install golang-go
}

apt_install() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "error: $* missing; install with: apt-get install -y $*" >&2; exit 1
  fi
  # Debian packages with a daemon start it unless policy-rc.d forbids it.
  local policy=/usr/sbin/policy-rc.d created=
  if [ ! -e $policy ]; then printf '#!/bin/sh\nexit 101\n' > $policy; chmod 755 $policy; created=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null \
    || { DEBIAN_FRONTEND=noninteractive apt-get update >/dev/null \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null; }
  [ -z "$created" ] || rm -f $policy
}

for tool in "${wanted[@]}"; do
  case $tool in
    kustomize)
      if [ ! -x "$GOBIN_DIR/kustomize" ]; then
        ensure_go
        echo "installing kustomize $KUSTOMIZE_VERSION with go install (once)" >&2
        mkdir -p "$GOBIN_DIR"
        GOBIN=$GOBIN_DIR GOFLAGS=-mod=mod go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION" >&2
      fi ;;
    promtool)
      if ! command -v promtool >/dev/null 2>&1; then
        echo "installing promtool (Debian package prometheus) with apt-get (once)" >&2
        apt_install prometheus
        # The package's postinst may still have started a server under some init systems.
        command -v service >/dev/null 2>&1 && service prometheus stop >/dev/null 2>&1 || true
      fi ;;
    *) echo "unknown tool $tool" >&2; exit 2 ;;
  esac
done
