"""What the clean-root tier runs inside a root, and how it reads the output (pure functions).

README path: the README's own block (the one after README_MARKER) as written, with its
`git clone <URL>` pointed at a bundle of the checkout's HEAD. Package path: the package scenario
script (tests/cleanroot/guest/package_path.sh) next to the freshly built .deb. Every step is
preceded by a timestamped mark line, so the log says how long each took.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

README_MARKER = "<!-- clean-root tier:"
MARK = "@@cleanroot"
END = "end"
# `warnings.showwarning`'s format (`file.py:12: SomeWarning: text`), and tracebacks.
_PY_WARNING = re.compile(r"^\s*\S+\.py:\d+: [A-Z]\w*Warning: .*$", re.MULTILINE)
_TRACEBACK = "Traceback (most recent call last):"
_CLONE = re.compile(r"\bgit clone\s+(<[^>]*>|\S+)")


class ReadmeError(Exception):
    """The README has no block for the tier to run, or one it cannot follow."""


@dataclass(frozen=True)
class Step:
    label: str
    seconds: float


def readme_steps(readme: str) -> list[str]:
    """The command lines of the first ```sh block after README_MARKER."""
    at = readme.find(README_MARKER)
    if at < 0:
        raise ReadmeError(f"README.md has no {README_MARKER!r} comment before its install block")
    fence = re.search(r"^```(?:sh|bash|console)?\n(.*?)^```", readme[at:], re.DOTALL | re.M)
    if fence is None:
        raise ReadmeError(f"no code block after {README_MARKER!r} in README.md")
    lines = [line.strip() for line in fence.group(1).splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def clone_from(steps: list[str], source: str) -> list[str]:
    """The steps with the one `git clone <URL>` cloning `source` instead (the checkout's bundle),
    since the tier tests the checkout, not whatever the URL holds."""
    clones = [i for i, step in enumerate(steps) if _CLONE.search(step)]
    if len(clones) != 1:
        raise ReadmeError(f"expected one `git clone` in the README block, found {len(clones)}")
    out = list(steps)
    i = clones[0]
    out[i] = _CLONE.sub(lambda _: f"git clone {shlex.quote(source)}", steps[i], count=1)
    return out


def step_script(steps: list[str], *, workdir: str = "/root") -> str:
    """A bash script running `steps` in order as a user types them (each in the shell the previous
    one left, so `cd` carries over), stopping at the first failure, with a mark before each."""
    lines = [
        "set -eo pipefail",
        f'mark() {{ echo "{MARK} $(date +%s.%N) $*"; }}',
        # The last mark, whatever ends the script: a failed step gets its duration too.
        "trap 'mark \"exit $?\"' EXIT",
        f"cd {shlex.quote(workdir)}",
    ]
    for step in steps:
        lines.append(f"mark {shlex.quote(step)}")
        lines.append(step)
    lines.append(f"mark {END}")
    return "\n".join(lines) + "\n"


def package_script(scenario: str) -> str:
    """A package path: the scenario script, run from /root, where the .deb is."""
    return step_script([f"bash {shlex.quote(scenario)}"])


def step_durations(log: str) -> list[Step]:
    """Each marked step and how long it ran (until the next mark; the last step until the
    script's exit mark), from the mark lines."""
    marks = []
    for line in log.splitlines():
        if line.startswith(MARK + " "):
            _, stamp, label = line.split(" ", 2)
            marks.append((float(stamp), label))
    pairs = zip(marks, marks[1:], strict=False)
    return [Step(label, t1 - t0) for (t0, label), (t1, _) in pairs if label != END]


def finished(log: str) -> bool:
    return any(
        line.startswith(MARK + " ") and line.endswith(" " + END) for line in log.splitlines()
    )


def python_warnings(log: str) -> list[str]:
    """Python warnings and traceback headers printed anywhere in the output."""
    found = [m.group(0).strip() for m in _PY_WARNING.finditer(log)]
    found += [line.strip() for line in log.splitlines() if line.strip() == _TRACEBACK]
    return found


def check_lines(log: str) -> list[str]:
    """The scenario's own verdicts (`PASS ...`/`FAIL ...` lines), to show beside the timings."""
    return [line for line in log.splitlines() if line.startswith(("PASS ", "FAIL "))]


def format_steps(steps: list[Step]) -> str:
    return "\n".join(f"  {s.seconds:7.1f} s  {s.label}" for s in steps)
