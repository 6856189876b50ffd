#!/usr/bin/env bash
# Builds kube-apiserver and kube-controller-manager v1.20.2 from Debian's source package,
# once; the binaries are cached outside the repo and reused while present.
set -euo pipefail

cache="${VTPM_CACHE:-$HOME/.cache/vtpm-operator}/k8s-v1.20.2"
if [ -x "$cache/kube-apiserver" ] && [ -x "$cache/kube-controller-manager" ]; then
  echo "kube binaries cached in $cache"
  exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/vtpm-kube-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
apt-get source -qq kubernetes >/dev/null
tree=$(find . -maxdepth 1 -type d -name 'kubernetes-*' | head -n 1)
cd "$tree"

# The vendored reflect2 1.0.1 crashes the apiserver (SIGSEGV in UnsafeIterate) under Go >= 1.18
# on the first custom object; Debian's 1.0.2 fixes it.
rm -f vendor/github.com/modern-go/reflect2/*.go vendor/github.com/modern-go/reflect2/*.s
cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go vendor/github.com/modern-go/reflect2/
cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.s vendor/github.com/modern-go/reflect2/ 2>/dev/null || true
rm -f vendor/github.com/modern-go/reflect2/*_test.go

# make (not go build) generates the openapi code first; it builds from vendor/ offline.
env -u GOFLAGS CGO_ENABLED=0 make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >build.log 2>&1 \
  || { tail -n 40 build.log; exit 1; }

mkdir -p "$cache"
install -m 0755 _output/bin/kube-apiserver _output/bin/kube-controller-manager "$cache/"
echo "kube binaries built into $cache"
