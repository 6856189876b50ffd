#!/usr/bin/env bash
# Regenerates requirements.lock, the image's dependencies pinned with hashes, from pyproject.toml
# (the project's dependencies and its build-system requirements, setuptools). Run it after
# changing either; tests/unit/test_lock.py fails while the lock disagrees with pyproject.toml.
# pip-tools runs from a throwaway venv so that it never enters the project's own.
set -euo pipefail
cd "$(dirname "$0")/.."

tools=$(mktemp -d "${TMPDIR:-/tmp}/vtpm-lock.XXXXXX")
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools"
"$tools/bin/pip" install --quiet --disable-pip-version-check 'pip-tools==7.6.2'
"$tools/bin/pip-compile" --quiet --generate-hashes --allow-unsafe --strip-extras \
  --build-deps-for wheel --no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
  --output-file requirements.lock pyproject.toml
echo "requirements.lock regenerated"
