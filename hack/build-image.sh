#!/usr/bin/env bash
# Builds the shipped Dockerfile, unmodified, on a machine with no registry image to pull:
#   hack/build-image.sh [IMAGE]        (default IMAGE: localhost/vtpm-operator:test)
#
# 1. The Dockerfile's base (ARG BASE_IMAGE, debian:bookworm-slim) is made from Debian's own
#    packages with mmdebstrap's minbase variant and stored under the very name the FROM line
#    resolves to. minbase has no python3, as the real slim image has none, so a Dockerfile that
#    forgot to install it would fail here too. Made once; reused while podman holds it.
# 2. buildah builds with --pull=never, so nothing but that local base can be used.
#
# This sandbox's needs, on every build and run (see also hack/testbed/image.py): runc (crun
# refuses hybrid cgroups), the cgroupfs manager (no systemd), explicit rlimits (the defaults are
# refused with EPERM) and host networking (netavark fails here).
set -euo pipefail
cd "$(dirname "$0")/.."

image="${1:-localhost/vtpm-operator:test}"
base=$(sed -n 's/^ARG BASE_IMAGE=//p' Dockerfile)
[ -n "$base" ] || { echo "Dockerfile has no 'ARG BASE_IMAGE=' default" >&2; exit 1; }
case "$base" in
  */*) base_ref="docker.io/$base" ;;
  *) base_ref="docker.io/library/$base" ;;
esac
suite="${base#*:}"
suite="${suite%-slim}"

ulimits=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=32768:32768)
podman=(podman --runtime runc --cgroup-manager=cgroupfs)

work=$(mktemp -d "${TMPDIR:-/tmp}/vtpm-image.XXXXXX")
trap 'rm -rf "$work"' EXIT

if ! "${podman[@]}" image exists "$base_ref"; then
  started=$SECONDS
  rootfs="$work/rootfs.tar"
  # The same dpkg settings as the official slim images: no manuals, docs or translations, and
  # unpacking without an fsync per file.
  # The merged-usr hook merges /usr itself, as those images are, instead of installing the
  # usrmerge package and with it all of perl.
  mmdebstrap --variant=minbase --quiet \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --dpkgopt=force-unsafe-io \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    "$suite" "$rootfs" \
    "deb http://deb.debian.org/debian $suite main" \
    "deb http://deb.debian.org/debian $suite-updates main" \
    "deb http://deb.debian.org/debian-security $suite-security main" \
    >"$work/mmdebstrap.log" 2>&1 || { tail -n 40 "$work/mmdebstrap.log" >&2; exit 1; }
  "${podman[@]}" import --quiet "$rootfs" "$base_ref" >/dev/null
  rm -f "$rootfs"
  echo "base image $base_ref made from Debian $suite (minbase) in $((SECONDS - started)) s"
fi

# pip inside the build trusts what this machine's pip trusts (here, a CA that Debian's own bundle
# lacks) and uses its index if it has an http(s) one; both go in as build secrets, never into
# the image.
secrets_dir="$work/secrets"
mkdir -m 0700 "$secrets_dir"
ca="${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}"
ca="${ca:-/etc/ssl/certs/ca-certificates.crt}"
cp "$ca" "$secrets_dir/pip-ca"
index="${PIP_INDEX_URL:-$(python3 -m pip config get global.index-url 2>/dev/null || true)}"
{
  echo "[global]"
  echo "cert = /run/secrets/pip-ca"
  case "$index" in http://* | https://*) echo "index-url = $index" ;; esac
} >"$secrets_dir/pip.conf"

started=$SECONDS
buildah --runtime runc --cgroup-manager cgroupfs bud --quiet --pull=never --layers \
  --network host "${ulimits[@]}" \
  --secret "id=pip.conf,src=$secrets_dir/pip.conf" --secret "id=pip-ca,src=$secrets_dir/pip-ca" \
  -t "$image" . >/dev/null
size=$("${podman[@]}" image inspect --format '{{.Size}}' "$image")
echo "image $image built in $((SECONDS - started)) s, $((size / 1000000)) MB"
