"""Where the reference outputs live (copied from the project's shared reference data)."""

from __future__ import annotations

import json
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data"
CASES: dict[str, list[str]] = json.loads((DATA / "mobile_sam_coins_cases.json").read_text())
