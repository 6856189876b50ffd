#!/usr/bin/env bash
# Builds the standalone apiextensions-apiserver 1.36 (the API server that judges CRD CEL rules)
# from Debian sid's golang-k8s-apiextensions-apiserver-dev source package, once; the binary is
# cached outside the repo and reused while present.
#
# sid is only read through a private apt index and its packages are only unpacked (dpkg -x) into
# a private root: nothing from sid is ever installed into this bookworm system.
set -euo pipefail

cache="${VTPM_CACHE:-$HOME/.cache/vtpm-operator}/apiext-1.36"
bin="$cache/apiextensions-apiserver"
if [ -x "$bin" ]; then
  echo "apiextensions-apiserver cached in $cache"
  exit 0
fi

start=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/tmp}/vtpm-apiext-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/apt/parts" "$work/apt/lists/partial" "$work/apt/cache/archives/partial" "$work/debs" "$work/root"

# The same mirror and keyring as the system's bookworm entry, suite sid.
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
keyring=$(awk '/^Signed-By:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
cat >"$work/apt/sid.sources" <<EOF
Types: deb
URIs: ${mirror:-http://deb.debian.org/debian}
Suites: sid
Components: main
Signed-By: ${keyring:-/usr/share/keyrings/debian-archive-keyring.gpg}
EOF
apt_private=(-o "Dir::Etc::sourcelist=$work/apt/sid.sources" -o "Dir::Etc::sourceparts=$work/apt/parts"
             -o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache=$work/apt/cache"
             -o "Dir::Etc::preferences=/dev/null" -o "Dir::Etc::preferencesparts=$work/apt/parts"
             -o "APT::Sandbox::User=root" -o "Debug::NoLocking=1")
apt-get "${apt_private[@]}" update -qq

# Every Go package the build needs, found from the dependency closure; the rest (libc...) is
# irrelevant to a CGO-free build from source.
apt-cache "${apt_private[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts \
    --no-breaks --no-replaces --no-enhances golang-k8s-apiextensions-apiserver-dev golang-go \
  | grep -E '^[a-z0-9]' | grep -E '^golang-' | sort -u >"$work/packages"
echo "downloading $(wc -l <"$work/packages") Go packages from sid" >&2
(cd "$work/debs" && xargs -a "$work/packages" apt-get "${apt_private[@]}" download -qq) >/dev/null
# Two unpackers at a time: each dpkg -x is mostly waiting on the disk.
find "$work/debs" -name '*.deb' -print0 | xargs -0 -n 8 -P 2 sh -c 'for d; do dpkg -x "$d" "$0"; done' "$work/root"
echo "sid packages fetched and unpacked in $(( $(date +%s) - start ))s" >&2

goroot=$(find "$work/root/usr/lib" -maxdepth 1 -type d -name 'go-1.*' | sort -V | tail -n 1)
src="$work/root/usr/share/gocode/src/k8s.io/apiextensions-apiserver"
[ -x "$goroot/bin/go" ] && [ -f "$src/main.go" ] || { echo "sid Go tree incomplete" >&2; exit 1; }
(cd "$src" && env -u GOFLAGS GOROOT="$goroot" GOPATH="$work/root/usr/share/gocode" GO111MODULE=off \
  GOTOOLCHAIN=local GOPROXY=off CGO_ENABLED=0 GOCACHE="$work/go-build" \
  "$goroot/bin/go" build -o "$work/apiextensions-apiserver" .) >"$work/build.log" 2>&1 \
  || { tail -n 40 "$work/build.log" >&2; exit 1; }

mkdir -p "$cache"
install -m 0755 "$work/apiextensions-apiserver" "$bin.tmp.$$"
mv "$bin.tmp.$$" "$bin" # atomic: a concurrent reader never sees a partial binary
echo "apiextensions-apiserver built into $cache in $(( $(date +%s) - start ))s"
