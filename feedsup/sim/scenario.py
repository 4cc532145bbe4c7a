"""Scenario files: faults scheduled at seconds after start.

JSON: a list ``[{"at": 5, "kind": "drop", "target": {}}, ...]`` or an object
``{"faults": [...]}``. TOML: ``[[faults]]`` tables with the same keys.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from .faults import FaultError, validate


class ScenarioError(ValueError):
    """A scenario file that cannot be used; names the file and the entry."""


def load_scenario(path: str | Path) -> tuple[dict[str, Any], ...]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError(f"{path}: {exc.strerror}") from None
    try:
        data: Any = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    if isinstance(data, dict):
        data = data.get("faults", data.get("fault"))
    if not isinstance(data, list):
        raise ScenarioError(f"{path}: expected a list of faults (or a 'faults' key holding one)")
    return tuple(check_entry(path, i, entry) for i, entry in enumerate(data))


def check_entry(path: Path, index: int, entry: Any) -> dict[str, Any]:
    where = f"{path}: faults[{index}]"
    if not isinstance(entry, dict):
        raise ScenarioError(f"{where}: expected a table/object")
    try:
        at = float(entry.get("at", 0))
    except (TypeError, ValueError):
        raise ScenarioError(f"{where}: at must be a number of seconds") from None
    params = {k: v for k, v in entry.items() if k not in ("at", "kind", "target")}
    try:
        validate(str(entry.get("kind")), entry.get("target") or {}, params)
    except FaultError as exc:
        raise ScenarioError(f"{where}: {exc}") from None
    return {**entry, "at": at}
