#!/usr/bin/env bash
# Everything a fresh machine needs, idempotent: Debian packages, the Python venv, and the cached
# builds (kube-apiserver 1.20 from Debian's source, apiextensions-apiserver 1.36 from sid's Go
# packages for the CEL tests, our simulator launcher).
set -euo pipefail
cd "$(dirname "$0")/.."

./hack/install-system-deps.sh
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
./hack/build-kube.sh
./hack/build-apiext.sh
./hack/build-vcsim.sh >/dev/null
