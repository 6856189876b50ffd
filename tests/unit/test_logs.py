"""--log-format: the operator's and Kopf's own log lines, as JSON objects or as text."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from vtpm_operator import logs

CLI = Path(sys.executable).with_name("vtpm-operator")
BODY = {
    "apiVersion": "vtpm-operator.io/v1alpha1",
    "kind": "VTPMPolicy",
    "metadata": {"namespace": "prod", "name": "windows", "uid": "1234-abcd"},
}


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """What configure() sends to its stream; the root logger as pytest had it is put back after."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    try:
        yield stream
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def kopf_object_logger() -> Any:
    """Kopf's own per-object logger, as its handlers and daemons get it."""
    return kopf.LocalObjectLogger(body=kopf.Body(BODY), settings=kopf.OperatorSettings())


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_json_lines_carry_time_level_logger_message_and_kopfs_object(captured: io.StringIO) -> None:
    logs.configure("json", stream=captured)
    kopf_object_logger().info("Handler 'keep-policy' succeeded.")
    logging.getLogger("vtpm_operator.engine").warning(
        "vCenter %s unreachable", "vc1", extra={"vcenter": "vc1"}
    )

    kopf_line, ours = (json.loads(line) for line in lines(captured))
    assert list(kopf_line)[:4] == ["time", "level", "logger", "message"]
    assert kopf_line["level"] == "info" and kopf_line["logger"] == "kopf.objects"
    assert kopf_line["message"] == "Handler 'keep-policy' succeeded."
    assert kopf_line["object"] == {
        "apiVersion": "vtpm-operator.io/v1alpha1", "kind": "VTPMPolicy",
        "namespace": "prod", "name": "windows", "uid": "1234-abcd",
    }  # fmt: skip
    assert datetime.fromisoformat(kopf_line["time"]).utcoffset() is not None  # an instant, with its zone
    assert "settings" not in kopf_line and "k8s_skip" not in kopf_line
    assert ours == {
        "time": ours["time"], "level": "warning", "logger": "vtpm_operator.engine",
        "message": "vCenter vc1 unreachable", "vcenter": "vc1",
    }  # fmt: skip


def test_json_keeps_a_traceback_on_one_line(captured: io.StringIO) -> None:
    logs.configure("json", stream=captured)
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        logging.getLogger("kopf.activities").exception("startup failed")
    (line,) = lines(captured)
    record = json.loads(line)
    assert record["level"] == "error" and record["message"] == "startup failed"
    assert "RuntimeError: boom" in record["exception"]


def test_text_lines_name_kopfs_object(captured: io.StringIO) -> None:
    logs.configure("text", stream=captured)
    kopf_object_logger().warning("Patching failed")
    logging.getLogger("vtpm_operator.cli").info("plain")
    kopf_line, plain = lines(captured)
    assert kopf_line.endswith("kopf.objects         [WARNING ] [prod/windows] Patching failed")
    assert plain.endswith("vtpm_operator.cli    [INFO    ] plain")
    with pytest.raises(json.JSONDecodeError):
        json.loads(plain)


def test_verbose_lets_debug_through(captured: io.StringIO) -> None:
    logs.configure("json", stream=captured)
    logging.getLogger("kopf.reactor").debug("hidden")
    logs.configure("json", verbose=True, stream=captured)
    logging.getLogger("kopf.reactor").debug("shown")
    assert [json.loads(line)["message"] for line in lines(captured)] == ["shown"]


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="logfmt"):
        logs.formatter("logfmt")


def test_the_run_command_logs_kopfs_own_lines_as_json(tmp_path: Path) -> None:
    # No API server: Kopf starts, then logs its retries against a closed loopback port.
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "x"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    operator = subprocess.Popen(
        [str(CLI), "run", "-A", "--metrics-port", "0", "--log-format", "json"],
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    records: list[dict[str, Any]] = []
    try:
        assert operator.stderr is not None
        deadline = time.monotonic() + 30
        while (
            len([r for r in records if r["logger"].startswith("kopf.")]) < 3 and time.monotonic() < deadline
        ):
            line = operator.stderr.readline()
            if not line:
                break
            records.append(json.loads(line))  # every line is one JSON object
    finally:
        operator.kill()
        operator.wait()
    kopf_lines = [r for r in records if r["logger"].startswith("kopf.")]
    assert len(kopf_lines) >= 3, records
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
