#!/usr/bin/env bash
# Builds kubelet and kube-scheduler v1.20.2, the node half of the test cluster, from the same
# Debian source package and with the same reflect2 fix as hack/build-kube.sh, once: the binaries
# are cached outside the repo and reused while present. On a machine where build-kube.sh's cache
# is empty too, it builds kube-apiserver and kube-controller-manager in the same make (see below).
# Also builds the node's pause program (hack/pause/pause.c), statically linked, into its cache.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache_root="${VTPM_CACHE:-$HOME/.cache/vtpm-operator}"
cache="$cache_root/k8s-v1.20.2-node"
control_plane="$cache_root/k8s-v1.20.2"  # hack/build-kube.sh's cache
mkdir -p "$cache"

if [ ! -x "$cache/pause" ]; then
  gcc -static -Os -s -o "$cache/pause.tmp" "$here/pause/pause.c"
  mv "$cache/pause.tmp" "$cache/pause"
fi

if [ -x "$cache/kubelet" ] && [ -x "$cache/kube-scheduler" ]; then
  echo "node binaries cached in $cache"
  exit 0
fi

# Two 1.4 GB Go builds of this tree at once would thrash a 2-core machine: wait for any other,
# ours or build-kube.sh's (the lock testbed.kube takes around it).
exec 9>"$cache_root/.build-node.lock"
flock 9
exec 8>"$cache_root/.build-kube.lock"
flock 8
if [ -x "$cache/kubelet" ] && [ -x "$cache/kube-scheduler" ]; then
  echo "node binaries cached in $cache"
  exit 0
fi

# On a machine with neither cache (a fresh CI machine), build the control plane's two binaries in
# the same make and cache them where build-kube.sh looks, which then has nothing to do: the four
# share most of their packages, so one build costs far less than two.
targets=(cmd/kubelet cmd/kube-scheduler)
if [ ! -x "$control_plane/kube-apiserver" ] || [ ! -x "$control_plane/kube-controller-manager" ]; then
  targets+=(cmd/kube-apiserver cmd/kube-controller-manager)
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
env -u GOFLAGS CGO_ENABLED=0 make WHAT="${targets[*]}" >build.log 2>&1 \
  || { tail -n 40 build.log; exit 1; }

# Copy, then rename: a cache entry is either whole or absent.
cache_binary() {
  install -m 0755 "_output/bin/$1" "$2/.$1.tmp"
  mv "$2/.$1.tmp" "$2/$1"
}
for binary in kubelet kube-scheduler; do cache_binary "$binary" "$cache"; done
echo "node binaries built into $cache"
if [ "${#targets[@]}" -gt 2 ]; then
  mkdir -p "$control_plane"
  for binary in kube-apiserver kube-controller-manager; do cache_binary "$binary" "$control_plane"; done
  echo "kube binaries built into $control_plane"
fi
