#!/usr/bin/env bash
# The whole check: lint, type check, every test (unit, integration, end-to-end) against real peers.
set -euo pipefail
cd "$(dirname "$0")/.."
./hack/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/lint-imports --no-cache
gofmt_out=$(gofmt -l hack/vcsim)
[ -z "$gofmt_out" ] || { echo "gofmt would change: $gofmt_out"; exit 1; }
(cd hack/vcsim && GO111MODULE=off GOPATH=/usr/share/gocode go vet . )
# pytest exits 5 when it collects nothing: that is a failure here, as any other non-zero exit.
# Two workers: the drills run beside the rest of the suite (tests/conftest.py says how). Arguments
# given after them win: `-n 0` runs everything in this process.
.venv/bin/pytest -n 2 --dist loadscope "$@"
