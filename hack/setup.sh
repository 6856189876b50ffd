#!/usr/bin/env bash
# Everything a fresh machine needs, idempotent: Debian packages, the Python venv, and the cached
# builds (kube-apiserver, then kubelet and kube-scheduler, from Debian's source; our simulator
# launcher; the operator's image, on a base image made once).
set -euo pipefail
cd "$(dirname "$0")/.."

./hack/install-system-deps.sh
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
./hack/build-kube.sh
./hack/build-vcsim.sh >/dev/null
# After build-kube.sh, never beside it: two of these Go builds at once thrash 2 cores.
./hack/build-node.sh
./hack/build-image.sh
