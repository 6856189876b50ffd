"""Container images for tests, with no registry: build the shipped Dockerfile, run it, hand it to a node.

Every podman and buildah call carries what this sandbox needs (see hack/build-image.sh): runc,
the cgroupfs manager, explicit rlimits and host networking.
"""

from __future__ import annotations

import fcntl
import resource
import subprocess
from pathlib import Path

from testbed.kube import cache_dir

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "hack" / "build-image.sh"
PODMAN = ("podman", "--runtime", "runc", "--cgroup-manager=cgroupfs")
BUILDAH = ("buildah",)  # only from/copy/config/commit: nothing runs, so no runtime flags
OPERATOR_IMAGE = "localhost/vtpm-operator:test"
PAUSE_IMAGE = "localhost/vtpm-testbed/pause:1"
# The hard nproc limit podman's processes get here, whatever `ulimit -Hu` says in a shell.
NPROC_LIMIT = 32768


class ImageError(RuntimeError):
    """An image could not be built, saved or run."""


def ulimit_args() -> list[str]:
    """Explicit rlimits for podman: the defaults it would set are refused with EPERM here."""
    _, nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={NPROC_LIMIT}:{NPROC_LIMIT}"]


def _run(argv: list[str], what: str, timeout: float = 900) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise ImageError(f"{what} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def build_operator_image(tag: str = OPERATOR_IMAGE) -> str:
    """Build the shipped Dockerfile with hack/build-image.sh (the base image is made once); return ``tag``."""
    lock_path = cache_dir().parent / ".build-image.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time: they share podman's storage
        _run(["bash", str(BUILD_SCRIPT), tag], "hack/build-image.sh")
    return tag


def run_container(image: str, *args: str, options: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """``podman run --rm --network=host`` with this sandbox's flags; returns the finished process."""
    argv = [*PODMAN, "run", "--rm", "--network=host", *ulimit_args(), *options, image, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def inspect(image: str, template: str) -> str:
    """``podman image inspect --format TEMPLATE``."""
    return _run([*PODMAN, "image", "inspect", "--format", template, image], "podman image inspect").strip()


def image_exists(image: str) -> bool:
    return subprocess.run([*PODMAN, "image", "exists", image], check=False).returncode == 0


def build_pause_image(pause_binary: Path, tag: str = PAUSE_IMAGE) -> str:
    """An image FROM scratch holding only the static pause program; made once, kept in podman's storage."""
    if image_exists(tag):
        return tag
    container = _run([*BUILDAH, "from", "scratch"], "buildah from scratch").strip()
    try:
        _run([*BUILDAH, "copy", "--chmod", "0755", container, str(pause_binary), "/pause"], "buildah copy")
        entrypoint = ["--entrypoint", '["/pause"]', "--user", "65535"]
        _run([*BUILDAH, "config", *entrypoint, container], "buildah config")
        _run([*BUILDAH, "commit", "--quiet", container, tag], "buildah commit")
    finally:
        subprocess.run([*BUILDAH, "rm", container], capture_output=True, check=False)
    return tag


def save_image(image: str, archive: Path) -> Path:
    """``podman save`` to a docker-archive that ``ctr images import`` takes."""
    archive.unlink(missing_ok=True)
    _run([*PODMAN, "save", "--quiet", "--output", str(archive), image], "podman save")
    return archive
