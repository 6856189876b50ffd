#!/usr/bin/env bash
# Builds the project's vcsim launcher (hack/vcsim) against Debian's govmomi 0.24.2 in GOPATH
# mode, into a cache outside the repo keyed by the hash of the Go sources. Skips the build when
# the binary is already there. Prints the binary path as the last line of stdout.
# Needs: golang-go, golang-github-vmware-govmomi-dev (hack/install-system-deps.sh).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="$here/vcsim"
cache="${VTPM_CACHE:-$HOME/.cache/vtpm-operator}"

hash="$(cd "$src" && LC_ALL=C ls -1 -- *.go | sort | xargs cat | sha256sum | cut -c1-12)"
out="$cache/vcsim-$hash"
bin="$out/vcsim"

if [ ! -x "$bin" ]; then
  if [ ! -d /usr/share/gocode/src/github.com/vmware/govmomi/simulator ]; then
    echo "govmomi simulator sources missing: run hack/install-system-deps.sh" >&2
    exit 1
  fi
  mkdir -p "$out"
  work="$(mktemp -d "$out/build.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  pkg="$work/gopath/src/vtpm-operator.io/vcsim"
  mkdir -p "$(dirname "$pkg")"
  cp -r "$src" "$pkg" # a copy, so the hash matches exactly what was built
  echo "building vcsim launcher into $out" >&2
  (cd "$pkg" && GO111MODULE=off GOPROXY=off GOFLAGS= GOPATH="$work/gopath:/usr/share/gocode" \
    GOCACHE="$cache/go-build" go build -o "$work/vcsim" .) >&2
  mv "$work/vcsim" "$bin.tmp.$$"
  mv "$bin.tmp.$$" "$bin" # atomic: concurrent builders never see a partial binary
fi
echo "$bin"
