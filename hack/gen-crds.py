#!/usr/bin/env python3
"""Writes crds/vcenters.yaml and crds/vtpmpolicies.yaml from the API models (vtpm_operator.api).

Run it after changing a model; tests/unit/test_api_crds.py fails while the committed files differ.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "operator"))

from vtpm_operator.api.crds import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main([str(REPO / "crds"), *sys.argv[1:]]))
