"""The option table as Markdown, as embedded in docs/ipsec-options.md (a unit test keeps the two
in step). Only the documentation and its test use it; the daemon never imports it.

May import: ike_options.options, stdlib.
"""

from __future__ import annotations

from ovs_ipsec.core.ike_options.options import (
    LEFT_RIGHT_REASON,
    OPTIONS,
    PREFIX,
    REJECTED_GROUPS,
)


def render_markdown() -> str:
    """The accepted and refused tables, as embedded in docs/ipsec-options.md."""
    lines = [
        "| OVSDB option | Spelling from | swanctl key | Values | Notes |",
        "|---|---|---|---|---|",
    ]
    for option in OPTIONS:
        names = ", ".join(f"`{PREFIX}{s}`" for s in option.spellings)
        cells = (names, option.origin, option.target, option.values, option.notes)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines += [
        "",
        "| Refused OVSDB option | Why |",
        "|---|---|",
    ]
    for reason, names in REJECTED_GROUPS:
        shown = ", ".join(f"`{PREFIX}{n}`" for n in names)
        lines.append(f"| {_cell(shown)} | {_cell(reason)} |")
    lines.append(f"| `{PREFIX}left*`, `{PREFIX}right*` | {_cell(LEFT_RIGHT_REASON)} |")
    lines.append(
        "| any other key | not an option this daemon knows (the reason suggests the nearest "
        "accepted spelling) |"
    )
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|") if text else "—"
