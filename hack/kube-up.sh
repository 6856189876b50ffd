#!/usr/bin/env bash
# Runs a local control plane (etcd + kube-apiserver + kube-controller-manager on 127.0.0.1) in the
# foreground and prints the KUBECONFIG export line; Ctrl-C stops it. Options: --help.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
PYTHONPATH="$root/hack${PYTHONPATH:+:$PYTHONPATH}" exec "$python" -m testbed.kube "$@"
