"""Log lines as text or as JSON (one object per line), the operator's and Kopf's alike.

Kopf logs through the standard `logging` tree (its per-object lines through "kopf.objects", with
the object's reference in the record's `k8s_ref`), so one handler on the root logger formats them
all. This replaces `kopf.configure`, which would install Kopf's own handler and formats.

JSON lines carry `time` (UTC, ISO 8601), `level`, `logger`, `message`, `object` (Kopf's reference
to the Kubernetes object the line is about: apiVersion, kind, namespace, name, uid) where there is
one, `exception` for a traceback, and any `extra=` fields the caller passed.
"""

from __future__ import annotations

import copy
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

FORMATS = ("text", "json")
# Kopf's own "full" format, so that text lines look as they did before --log-format existed.
TEXT_FORMAT = "[%(asctime)s] %(name)-20.20s [%(levelname)-8.8s] %(message)s"
# Record attributes Kopf adds that are no log fields: k8s_ref becomes `object`, the others are
# its event-posting switches and its settings object.
_KOPF_ATTRS = ("k8s_ref", "k8s_skip", "settings")


def _object_ref(record: logging.LogRecord) -> dict[str, str] | None:
    ref = getattr(record, "k8s_ref", None)
    if not isinstance(ref, dict):
        return None
    return {key: str(value) for key, value in ref.items() if value}


class JsonLineFormatter(JsonFormatter):
    """python-json-logger does the record-to-object work (extras, tracebacks, escaping)."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={
                "asctime": "time",
                "levelname": "level",
                "name": "logger",
                "exc_info": "exception",
            },
            reserved_attrs=[*RESERVED_ATTRS, *_KOPF_ATTRS],
            json_default=str,
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def add_fields(
        self, log_record: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_record, record, message_dict)
        log_record["level"] = record.levelname.lower()
        ref = _object_ref(record)
        if ref:
            log_record["object"] = ref


class TextFormatter(logging.Formatter):
    """Kopf's text lines: the object's namespace/name before the message, where there is one."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        ref = _object_ref(record)
        if ref and ref.get("name"):
            where = f"{ref['namespace']}/{ref['name']}" if ref.get("namespace") else ref["name"]
            record = copy.copy(record)  # other handlers must see the message unchanged
            record.msg = f"[{where}] {record.msg}"
        return super().format(record)


def formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonLineFormatter()
    if log_format == "text":
        return TextFormatter()
    raise ValueError(f"log format {log_format!r} is not one of {', '.join(FORMATS)}")


def configure(log_format: str, *, verbose: bool = False, stream: TextIO | None = None) -> None:
    """One handler on the root logger, in `log_format`; INFO, or DEBUG when verbose (as Kopf does)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # As kopf.configure does: asyncio's own debug chatter only when asked for.
    asyncio_logger = logging.getLogger("asyncio")
    asyncio_logger.propagate = verbose
    asyncio_logger.handlers[:] = [] if verbose else [logging.NullHandler()]
