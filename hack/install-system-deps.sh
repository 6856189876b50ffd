#!/usr/bin/env bash
# Installs the Debian packages the peers and the tests need. Idempotent; safe on a fresh machine.
set -euo pipefail

packages=(golang-go golang-github-vmware-govmomi-dev golang-github-modern-go-reflect2-dev
          etcd-server openssl rsync make dpkg-dev ca-certificates prometheus lua5.4)
# The image (hack/build-image.sh) and the node that runs it (hack/testbed/node.py): podman and
# buildah with runc, a base image from Debian's packages, containerd with the CNI loopback
# plugin, and a C compiler with a static libc for the pause program.
packages+=(podman buildah mmdebstrap runc uidmap containerd containernetworking-plugins gcc libc6-dev)

# The machine image ships kubectl 1.32; Debian's 1.20 client serves where it does not.
command -v kubectl >/dev/null || packages+=(kubernetes-client)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

# kube-apiserver is built from Debian's source package, so apt needs deb-src entries.
src_list=/etc/apt/sources.list.d/vtpm-operator-src.sources
if [ ! -f "$src_list" ]; then
  sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources > "$src_list"
  need_update=1
fi

if [ "${#missing[@]}" -gt 0 ] || [ -n "${need_update:-}" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  [ "${#missing[@]}" -gt 0 ] && apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Debian's etcd-server package may start a system etcd on 2379; the peers use their own ports.
systemctl disable --now etcd >/dev/null 2>&1 || true
# Likewise containerd: the test node starts its own, with its own config and socket.
systemctl disable --now containerd >/dev/null 2>&1 || true
echo "system packages ready"
