"""Validated configuration: YAML in, frozen pydantic models out, errors that name the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration value is missing, misspelt or out of range."""


class StrictModel(BaseModel):
    """Base for every config section: frozen, and unknown keys are errors (typos fail)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _format_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        kind = e["type"]
        if kind == "extra_forbidden":
            lines.append(f"  - {loc}: unknown field (check the spelling); value was {e.get('input')!r}")
            continue
        msg = e["msg"]
        value = e.get("input")
        allowed = ""
        ctx = e.get("ctx") or {}
        if "expected" in ctx:
            allowed = f"; allowed: {ctx['expected']}"
        lines.append(f"  - {loc} = {value!r}: {msg}{allowed}")
    return "\n".join(lines)


def validate_config(model: type[M], data: dict[str, Any] | None, *, source: str = "config") -> M:
    """Validate a mapping into ``model``; raise ConfigError listing every bad field."""
    try:
        return model.model_validate(data or {})
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with the safe loader; a clear error for a missing or bad file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file not found: '{path}'")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"config file '{path}' is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping at the top level, "
                          f"got {type(data).__name__}")
    return data


def load_config(model: type[M], path: str | Path) -> M:
    """Read ``path`` (YAML) and validate it into ``model``."""
    return validate_config(model, load_yaml(path), source=f"'{path}'")
