#!/usr/bin/env bash
# The operator's main job on an embedded default: a local control plane and a vCenter simulator
# with a mixed fleet, a sample Secret and VTPMPolicy, the operator reconciling until settled.
set -euo pipefail
cd "$(dirname "$0")/.."
./hack/setup.sh
exec .venv/bin/python hack/demo.py "$@"
