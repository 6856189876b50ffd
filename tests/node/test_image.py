"""The shipped Dockerfile, built unmodified here (hack/build-image.sh), run with podman as a user would.

The base image is a local stand-in for debian:bookworm-slim (mmdebstrap minbase, no python3), so a
Dockerfile that forgot python3 or a dependency fails here as it would for users.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from testbed.image import inspect, run_container

REPO = Path(__file__).resolve().parents[2]
UID = "10001"
# How admins run it: unprivileged, read-only root, no capabilities.
LOCKED_DOWN = ("--read-only", "--user", UID, "--cap-drop=ALL", "--security-opt=no-new-privileges")

pytestmark = pytest.mark.slow


def test_help_works_as_uid_10001_on_a_read_only_root(operator_image: str) -> None:
    result = run_container(operator_image, "--help", options=LOCKED_DOWN)
    assert result.returncode == 0, result.stderr
    assert "usage: vtpm-operator" in result.stdout
    assert "{run,audit}" in result.stdout


def test_by_default_the_process_is_uid_10001_and_its_root_read_only(operator_image: str) -> None:
    # No --user here: the image's own USER must give 10001. The root mount's options come from
    # the kernel, as the process sees them.
    script = "id -u; id -g; awk '$5 == \"/\" {print $6}' /proc/self/mountinfo"
    result = run_container(operator_image, "-c", script, options=("--read-only", "--entrypoint", "/bin/sh"))
    assert result.returncode == 0, result.stderr
    uid, gid, root_options = result.stdout.split()
    assert (uid, gid) == (UID, UID)
    assert "ro" in root_options.split(",")


def test_image_runs_as_10001_by_default_and_has_oci_labels(operator_image: str) -> None:
    assert inspect(operator_image, "{{.Config.User}}") == f"{UID}:{UID}"
    assert inspect(operator_image, "{{json .Config.Entrypoint}}") == '["vtpm-operator"]'
    labels = {
        key: inspect(operator_image, f'{{{{index .Labels "org.opencontainers.image.{key}"}}}}')
        for key in ("title", "version", "description", "base.name")
    }
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert labels["title"] == "vtpm-operator"
    assert labels["version"] == version
    assert labels["description"]
    assert labels["base.name"] == "debian:bookworm-slim"


def test_final_image_has_no_pip_no_setuptools_and_no_build_secrets(operator_image: str) -> None:
    script = (
        "python3 -m pip --version >/dev/null 2>&1 && echo pip-module;"
        "command -v pip pip3 >/dev/null 2>&1 && echo pip-command;"
        "python3 -c 'import setuptools' >/dev/null 2>&1 && echo setuptools;"
        "ls /usr/share/python-wheels 2>/dev/null | grep -q . && echo bundled-wheels;"
        "test -e /etc/pip.conf -o -e /run/secrets/pip-ca && echo build-secrets;"
        "python3 -c 'import vtpm_operator, kopf, kubernetes, pyVmomi' && echo imports-ok"
    )
    result = run_container(operator_image, "-c", script, options=(*LOCKED_DOWN, "--entrypoint", "/bin/sh"))
    assert result.stdout.split() == ["imports-ok"], result.stdout + result.stderr
