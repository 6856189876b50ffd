#!/usr/bin/env bash
# Everything a fresh machine needs, idempotent: Debian packages, the Python venv, and the cached
# builds (kube-apiserver, then kubelet and kube-scheduler, from Debian's source; apiextensions-
# apiserver 1.36 from sid's Go packages for the CEL tests; our simulator launcher; the operator's
# image, on a base image made once).
set -euo pipefail
cd "$(dirname "$0")/.."

./hack/install-system-deps.sh
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
# build-node.sh first: on a fresh machine it builds the control plane's binaries in the same make
# as the node's (one build of the shared Kubernetes packages instead of two), and build-kube.sh
# then finds them cached. The image build, mostly downloads, runs beside it.
./hack/build-image.sh >"${TMPDIR:-/tmp}/vtpm-build-image.log" 2>&1 &
image_build=$!
./hack/build-node.sh
./hack/build-kube.sh
./hack/build-apiext.sh
./hack/build-vcsim.sh >/dev/null
wait "$image_build" || { cat "${TMPDIR:-/tmp}/vtpm-build-image.log"; exit 1; }
tail -n 1 "${TMPDIR:-/tmp}/vtpm-build-image.log"
