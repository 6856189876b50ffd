#!/usr/bin/env bash
# Builds kubelet and kube-scheduler v1.20.2, the node half of the test cluster, from the same
# Debian source package and with the same reflect2 fix as hack/build-kube.sh, once: the binaries
# are cached outside the repo and reused while present. Also builds the node's pause program
# (hack/pause/pause.c), statically linked, into the same cache.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache="${VTPM_CACHE:-$HOME/.cache/vtpm-operator}/k8s-v1.20.2-node"
mkdir -p "$cache"

if [ ! -x "$cache/pause" ]; then
  gcc -static -Os -s -o "$cache/pause.tmp" "$here/pause/pause.c"
  mv "$cache/pause.tmp" "$cache/pause"
fi

if [ -x "$cache/kubelet" ] && [ -x "$cache/kube-scheduler" ]; then
  echo "node binaries cached in $cache"
  exit 0
fi

# Two 1.4 GB Go builds of this tree at once would thrash a 2-core machine: wait for any other.
exec 9>"$cache/../.build-node.lock"
flock 9
if [ -x "$cache/kubelet" ] && [ -x "$cache/kube-scheduler" ]; then
  echo "node binaries cached in $cache"
  exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/vtpm-node-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
apt-get source -qq kubernetes >/dev/null 2>&1
tree=$(find . -maxdepth 1 -type d -name 'kubernetes-*' | head -n 1)
cd "$tree"

# The vendored reflect2 1.0.1 is broken under Go >= 1.18 (SIGSEGV in UnsafeIterate); Debian's
# 1.0.2 fixes it. Same fix as for the API server, so the node and the control plane match.
rm -f vendor/github.com/modern-go/reflect2/*.go vendor/github.com/modern-go/reflect2/*.s
cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go vendor/github.com/modern-go/reflect2/
cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.s vendor/github.com/modern-go/reflect2/ 2>/dev/null || true
rm -f vendor/github.com/modern-go/reflect2/*_test.go

# make (not go build) generates the openapi code first; it builds from vendor/ offline.
env -u GOFLAGS CGO_ENABLED=0 make WHAT="cmd/kubelet cmd/kube-scheduler" >build.log 2>&1 \
  || { tail -n 40 build.log; exit 1; }

install -m 0755 _output/bin/kubelet _output/bin/kube-scheduler "$cache/"
echo "node binaries built into $cache"
