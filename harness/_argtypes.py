"""Argument types shared by the command-line modules (no heavy imports)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def csv_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [part.strip() for part in text.split(",") if part.strip()]


def ints(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``."""
    try:
        return [int(s) for s in csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 0,1,2, got {text!r}") from None


def json_or_text(raw: str) -> Any:
    """A value parsed as JSON when it is JSON (numbers, true, lists), else the text itself."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def json_values(text: str) -> list[Any]:
    return [json_or_text(part) for part in csv_list(text)]


def key_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE``."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), json_or_text(raw)


def model_param(text: str) -> tuple[str, str, Any]:
    """``MODEL.KEY=VALUE``."""
    target, sep, raw = text.partition("=")
    model, dot, key = target.partition(".")
    if not sep or not dot or not model or not key:
        raise argparse.ArgumentTypeError(f"--param takes MODEL.KEY=VALUE, got {text!r}")
    return model, key, json_or_text(raw)


def split(text: str) -> tuple[float, float, float]:
    """``TRAIN,VALID,TEST`` fractions."""
    try:
        parts = [float(x) for x in csv_list(text)]
    except ValueError:
        parts = []
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"--split takes train,valid,test fractions, got {text!r}")
    return parts[0], parts[1], parts[2]
