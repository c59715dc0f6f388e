"""VICI values as the rest of the daemon sees them: charon sends bytes everywhere, we use str.

May import: stdlib.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def decode(value: Any) -> Any:
    """bytes -> str, recursively through dicts and lists (undecodable bytes are replaced)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, Mapping):
        return {str(k): decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value
