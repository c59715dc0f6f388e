"""The benchmark's table: per N, each figure as median (min-max) over the repeats beside the raw
VICI floor and upstream, with issue 14's bars (PASS/FAIL) beside the figures they judge; then
the growth between consecutive N (linear or not, KiB of RSS per added tunnel); the restart
figure; and the breakdown of one `ovs-vsctl` adding N ports.

Bars are judged on medians (writes on the largest count seen in any repeat), at the N the issue
names them for (BAR_SIZES); at other N no bar is printed.

Just over 400 lines: one formatter per section of the table, each short; splitting them
apart would only scatter the column layout they share.

May import: stdlib.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any

BAR_SIZES = (1000, 5000)
FLOOR_FACTOR = {1000: 1.2, 5000: 1.0}  # cold start and bulk add, ours / raw VICI floor
CHANGE_MS = 10.0  # one change inside the daemon
IDLE_CPU_S = 0.1  # per 60 s
RSS_VS_UPSTREAM = 1.15
KIB_PER_TUNNEL = 4.0  # RSS growth between N = 1,000 and 5,000
RESTART_S = 1.0  # N = 1,000, READY with zero writes


def fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def med(values: Sequence[float] | None) -> float | None:
    return statistics.median(values) if values else None


def spread(values: Sequence[float] | None) -> str:
    """median (min-max); one value alone."""
    if not values:
        return "n/a"
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}-{fmt(max(values))})"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return "n/a"
    return "inf" if b == 0 else f"{a / b:.2f}x"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def bar_floor(n: int, ours: float | None, floor: float | None) -> str:
    factor = FLOOR_FACTOR.get(n)
    if factor is None or ours is None:
        return ""
    if not floor:
        return f"<= {factor}x floor: n/a (no floor)"
    return f"<= {factor}x floor: {verdict(ours <= factor * floor)}"


def bar_upstream_rss(n: int, ours: float | None, up: float | None, why: str) -> str:
    if n not in BAR_SIZES or ours is None:
        return ""
    if up is None:
        return f"<= {RSS_VS_UPSTREAM}x upstream: n/a ({why})"
    return f"<= {RSS_VS_UPSTREAM}x upstream: {verdict(ours <= RSS_VS_UPSTREAM * up)}"


ROWS = (
    # (label, system key for the upstream column, metric)
    ("cold start [s]", "upstream", "cold_s"),
    ("  upstream --no-restart-ike-daemon [s]", "upstream_norestart", "cold_s"),
    ("  our daemon's CPU meanwhile [CPU-s]", None, "cold_daemon_cpu_s"),
    ("  charon's CPU meanwhile [CPU-s]", None, "cold_charon_cpu_s"),
    ("bulk add [s]", "upstream", "bulk_s"),
    ("  our daemon's CPU meanwhile [CPU-s]", None, "bulk_daemon_cpu_s"),
    ("  charon's CPU meanwhile [CPU-s]", None, "bulk_charon_cpu_s"),
    ("one change, median [ms]", "upstream", "change_med_ms"),
    ("one change, p95 [ms]", "upstream", "change_p95_ms"),
    ("  in daemon, median [ms]", None, "internal_med_ms"),
    ("  in daemon, p95 [ms]", None, "internal_p95_ms"),
    ("    own work, median [ms]", None, "own_med_ms"),
    ("    own work, p95 [ms]", None, "own_p95_ms"),
    ("  commit -> daemon logs it, median [ms]", None, "commit_to_log_med_ms"),
    ("RSS after the changes [MiB]", "upstream", "rss_mib"),
    ("peak RSS (VmHWM) [MiB]", "upstream", "hwm_mib"),
)

WIDTH = (40, 22, 22, 22, 8, 10)


def line(cells: Sequence[str], note: str = "") -> str:
    text = "  ".join(c.ljust(w) for c, w in zip(cells, WIDTH, strict=True))
    return (text + "  " + note).rstrip()


def _bar(n: int, metric: str, ours: float | None, floor: float | None, up: float | None,
         up_why: str) -> str:  # fmt: skip
    if metric in ("cold_s", "bulk_s"):
        return bar_floor(n, ours, floor)
    if metric in ("internal_med_ms", "internal_p95_ms") and n in BAR_SIZES and ours is not None:
        return f"<= {CHANGE_MS:g} ms: {verdict(ours <= CHANGE_MS)}"
    if metric == "rss_mib":
        return bar_upstream_rss(n, ours, up, up_why)
    return ""


def _idle(idle: list[dict[str, Any]], key: str, fn: Callable[[dict[str, Any]], float]) -> list:
    return [fn(window[key]) for window in idle if key in window]


def idle_rows(n: int, idle: list[dict[str, Any]], seconds: float, up_why: str) -> list[str]:
    scale = 60.0 / seconds
    out: list[str] = []
    ours = _idle(idle, "ours", lambda o: o["cpu_s"] * scale)
    if not ours:
        return out
    up = _idle(idle, "upstream", lambda o: o["cpu_s"] * scale)
    checks = _idle(idle, "ours", lambda o: o["check_cpu_s"] * scale)
    cpu_bar = f"<= {IDLE_CPU_S:g}: {verdict(med(ours) <= IDLE_CPU_S)}" if n in BAR_SIZES else ""  # type: ignore[operator]
    out.append(line(["idle CPU per 60 s [CPU-s]", spread(ours), "-", spread(up), "-", ""], cpu_bar))
    out.append(line(["  of which periodic checks [CPU-s]", spread(checks), "-", "-", "-", ""]))
    wakeups = _idle(idle, "ours", lambda o: o["wakeups"] * scale)
    others = _idle(idle, "ours", lambda o: o["other_wakeups"])
    out.append(
        line(
            [
                "idle wake-ups per 60 s",
                spread(wakeups),
                "-",
                spread(_idle(idle, "upstream", lambda o: o["wakeups"] * scale)),
                "-",
                "",
            ],
            f"(info) wake-ups other than the check: {int(max(others))}" if others else "",
        )
    )
    oc = _idle(idle, "ours_charon", lambda o: o["cpu_s"] * scale)
    uc = _idle(idle, "upstream_charon", lambda o: o["cpu_s"] * scale)
    out.append(line(["  charon's CPU meanwhile, per 60 s", spread(oc), "-", spread(uc), "-", ""]))
    per_check = [
        window["ours"]["check_cpu_s"] / window["ours"]["check_wakeups"] * 1000
        for window in idle
        if "ours" in window and window["ours"]["check_wakeups"]
    ]
    if per_check:
        out.append(line(["  one periodic check [CPU-ms]", spread(per_check), "-", "-", "-", ""]))
    rss = _idle(idle, "ours", lambda o: o["rss_mib"])
    up_rss = _idle(idle, "upstream", lambda o: o["rss_mib"])
    out.append(
        line(
            [
                "RSS after idling [MiB]",
                spread(rss),
                "-",
                spread(up_rss),
                "-",
                ratio(med(rss), med(up_rss)),
            ],
            bar_upstream_rss(n, med(rss), med(up_rss), up_why),
        )
    )
    return out


def restart_rows(n: int, ours: dict[str, list[Any]]) -> list[str]:
    ready = ours.get("restart_ready_s")
    if not ready and not ours.get("restart_detail"):
        return []
    parent = ours.get("restart_parent_s")
    charon = ours.get("restart_charon_writes", [])
    kernel = ours.get("restart_kernel_writes", [])
    bar = ""
    if n == 1000:
        ok = (
            bool(ready)
            and med(ready) <= RESTART_S  # type: ignore[operator]
            and max(charon, default=1) == 0
            and max(kernel, default=1) == 0
        )
        bar = f"READY <= {RESTART_S:g} s with 0 writes: {verdict(ok)}"
    out = [
        line(["restart: spawn -> READY=1 [s]", spread(ready), "-", "-", "-", "-"], bar),
        line(["  spawn -> first pass done [s]", spread(parent), "-", "-", "-", "-"],
             "(its --detach parent exited)"),
        line(["  writes to charon meanwhile", spread(charon), "-", "-", "-", "-"],
             "(charon's log: vici requests)"),
        line(["  writes to the kernel meanwhile", spread(kernel), "-", "-", "-", "-"],
             "(ip xfrm monitor)"),
    ]  # fmt: skip
    details = ours.get("restart_detail") or []
    if details:
        last = details[-1]

        def words(counts: dict[str, int]) -> str:
            return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"

        out.append(
            f"    last restart: charon writes {words(last['charon_writes'])}; kernel "
            f"{words(last['kernel'])}; charon reads {words(last['charon_reads'])}"
        )
    return out


def vsctl_rows(n: int, vsctl: list[dict[str, Any]]) -> list[str]:
    if not vsctl:
        return []

    def col(part: str, key: str) -> str:
        return spread([run[part][key] for run in vsctl if key in run[part]])

    out = [
        "",
        f"one ovs-vsctl adding {n} ports (`-- add-port br0 tI -- set interface tI type=gre "
        f"options:...` x {n}; {len(vsctl)} run(s): median (min-max))",
        f"  {'':42}{'ovsdb-server alone':24}with our daemon attached",
    ]
    rows = (
        ("ovs-vsctl wall [s]", "wall_s"),
        ("  ovs-vsctl's own CPU [CPU-s]", "vsctl_cpu_s"),
        ("  ovsdb-server's CPU meanwhile [CPU-s]", "ovsdb-server_cpu_s"),
        ("  our daemon's CPU meanwhile [CPU-s]", "ours_cpu_s"),
        ("  charon's CPU meanwhile [CPU-s]", "charon_cpu_s"),
    )
    for label, key in rows:
        out.append(f"  {label:42}{col('alone', key):24}{col('with_daemon', key)}")
    for part in ("alone", "with_daemon"):
        for run in vsctl:
            r = run[part]
            busy = sum(v for k, v in r.items() if k.endswith("_cpu_s") and "_after_" not in k)
            r["waiting_s"] = max(0.0, r["wall_s"] - busy)
    out.append(
        f"  {'  wall not spent on those CPUs [s]':42}{col('alone', 'waiting_s'):24}"
        f"{col('with_daemon', 'waiting_s')}"
    )
    out.append(f"  {'spawn -> converged [s]':42}{'-':24}{col('with_daemon', 'converged_s')}")
    for run in vsctl:
        run["with_daemon"]["tail_s"] = (
            run["with_daemon"]["converged_s"] - run["with_daemon"]["wall_s"]
        )
    out.append(f"  {'  after the call returned [s]':42}{'-':24}{col('with_daemon', 'tail_s')}")
    out.append(
        f"  {'    our daemon / charon CPU then [CPU-s]':42}{'-':24}"
        f"{col('with_daemon', 'ours_after_cpu_s')} / {col('with_daemon', 'charon_after_cpu_s')}"
    )
    return out


def growth_rows(a: int, b: int, ra: dict[str, Any], rb: dict[str, Any]) -> list[str]:
    """Figures at a and b tunnels side by side: growth, per added tunnel, bars for 1k -> 5k."""
    k = b / a
    judged = (a, b) == (1000, 5000)
    out = [
        "",
        f"growth from N = {a} to N = {b} ({k:g}x the tunnels; medians)",
        f"  {'figure':34}{'at ' + str(a):>10}{'at ' + str(b):>10}{'growth':>9}"
        f"{'floor':>9}  {'per added tunnel':18}bar",
    ]
    for label, metric, unit, judge in (
        ("cold start [s]", "cold_s", "ms", True),
        ("  our daemon's CPU in it [CPU-s]", "cold_daemon_cpu_s", "ms", False),
        ("  charon's CPU in it [CPU-s]", "cold_charon_cpu_s", "ms", False),
        ("bulk add [s]", "bulk_s", "ms", True),
        ("  our daemon's CPU in it [CPU-s]", "bulk_daemon_cpu_s", "ms", False),
        ("  charon's CPU in it [CPU-s]", "bulk_charon_cpu_s", "ms", False),
        ("one change in daemon [ms]", "internal_med_ms", "", False),
        ("restart -> READY [s]", "restart_ready_s", "ms", True),
    ):
        va, vb = med(ra["systems"]["ours"].get(metric)), med(rb["systems"]["ours"].get(metric))
        fa, fb = med(ra["systems"]["floor"].get(metric)), med(rb["systems"]["floor"].get(metric))
        if va is None or vb is None:
            continue
        floor_growth = ratio(fb, fa) if fa and fb else "-"
        per = f"{(vb - va) * 1000 / (b - a):.3f} {unit}" if unit else "-"
        bar = ""
        if judged and judge:
            bar = f"<= {k:g}x (linear): {verdict(vb <= k * va)}"
        elif judged and unit:
            bar = f"(info) {'no worse than linear' if vb <= k * va else 'worse than linear'}"
        out.append(
            f"  {label:34}{fmt(va):>10}{fmt(vb):>10}{ratio(vb, va):>9}{floor_growth:>9}  "
            f"{per:18}{bar}"
        )
    for label, system, get in (
        ("RSS after the changes [MiB]", "ours", lambda r: med(r["systems"]["ours"].get("rss_mib"))),
        ("RSS after idling [MiB]", "ours", lambda r: _idle_med(r, "ours")),
        ("upstream RSS after the changes", "upstream",
         lambda r: med(r["systems"]["upstream"].get("rss_mib"))),
        ("upstream RSS after idling", "upstream", lambda r: _idle_med(r, "upstream")),
    ):  # fmt: skip
        va, vb = get(ra), get(rb)
        if va is None or vb is None:
            continue
        kib = (vb - va) * 1024 / (b - a)
        bar = ""
        if judged and system == "ours":
            bar = f"<= {KIB_PER_TUNNEL:g} KiB/tunnel: {verdict(kib <= KIB_PER_TUNNEL)}"
        out.append(
            f"  {label:34}{fmt(va):>10}{fmt(vb):>10}{ratio(vb, va):>9}{'-':>9}  "
            f"{kib:.2f} KiB{'':9}{bar}"
        )
    vsctl = [(r.get("vsctl") or [], label) for r, label in ((ra, a), (rb, b))]
    if all(runs for runs, _ in vsctl):
        for label, key in (("one ovs-vsctl, wall [s]", "wall_s"),
                           ("  its own CPU [CPU-s]", "vsctl_cpu_s"),
                           ("  ovsdb-server's CPU [CPU-s]", "ovsdb-server_cpu_s")):  # fmt: skip
            va = med([run["alone"][key] for run in vsctl[0][0] if key in run["alone"]])
            vb = med([run["alone"][key] for run in vsctl[1][0] if key in run["alone"]])
            if va is None or vb is None:
                continue
            note = ""
            if va > 0 and vb > 0:
                note = f"growth ~ N^{math.log(vb / va) / math.log(k):.2f} (ovsdb-server alone)"
            out.append(
                f"  {label:34}{fmt(va):>10}{fmt(vb):>10}{ratio(vb, va):>9}{'-':>9}  {'-':18}{note}"
            )
    return out


def _idle_med(result: dict[str, Any], key: str) -> float | None:
    return med([w[key]["rss_mib"] for w in result["idle"] if key in w and "rss_mib" in w[key]])


def render(
    results: dict[int, dict[str, Any]],
    header: list[str],
    repeat: int,
    idle_seconds: float,
    upstream_why: str,
) -> str:
    out = list(header)
    names = ("figure", "ours", "raw VICI floor", "upstream", "/floor", "/upstream")
    for n, result in results.items():
        sysres = result["systems"]
        plural = "s" if repeat != 1 else ""
        out += [
            "",
            f"N = {n}  ({repeat} repeat{plural}: median (min-max); ratios of medians)",
            line(list(names), "bar (issue 14)" if n in BAR_SIZES else ""),
        ]
        ours_all = sysres["ours"]
        for label, up_key, metric in ROWS:
            ours, floor = ours_all.get(metric), sysres["floor"].get(metric)
            up = sysres[up_key].get(metric) if up_key else None
            if up_key == "upstream_norestart":
                cells = [label, "", "", spread(up), "", ratio(med(ours), med(up))]
            else:
                cells = [
                    label,
                    spread(ours),
                    spread(floor) if floor else "-",
                    spread(up) if up_key else "-",
                    ratio(med(ours), med(floor)) if floor else "-",
                    ratio(med(ours), med(up)) if up_key else "-",
                ]
            bar = _bar(n, metric, med(ours), med(floor), med(up), upstream_why)
            if up_key != "upstream_norestart":
                out.append(line(cells, bar))
            else:
                out.append(line(cells))
        out += idle_rows(n, result["idle"], idle_seconds, upstream_why)
        out += restart_rows(n, ours_all)
        out += vsctl_rows(n, result.get("vsctl", []))
        for note in result["notes"]:
            out.append(f"  n/a: {note.splitlines()[0]}")
    sizes = sorted(results)
    for a, b in zip(sizes, sizes[1:], strict=False):
        out += growth_rows(a, b, results[a], results[b])
    return "\n".join(text.rstrip() for text in out)


def _ours(metric: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda result: med(result["systems"]["ours"].get(metric))


COMPARED = (
    ("cold start [s]", _ours("cold_s")),
    ("  / floor", lambda r: _over_floor(r, "cold_s")),
    ("bulk add [s]", _ours("bulk_s")),
    ("  / floor", lambda r: _over_floor(r, "bulk_s")),
    ("one change in daemon, median [ms]", _ours("internal_med_ms")),
    ("RSS after the changes [MiB]", _ours("rss_mib")),
    ("RSS after idling [MiB]", lambda r: _idle_med(r, "ours")),
    ("idle CPU per 60 s [CPU-s]", lambda r: _idle_cpu(r)),
    ("restart -> READY [s]", _ours("restart_ready_s")),
    ("restart writes to charon", _ours("restart_charon_writes")),
    ("restart writes to the kernel", _ours("restart_kernel_writes")),
)


def _over_floor(result: dict[str, Any], metric: str) -> float | None:
    ours = med(result["systems"]["ours"].get(metric))
    floor = med(result["systems"]["floor"].get(metric))
    return ours / floor if ours is not None and floor else None


def _idle_cpu(result: dict[str, Any]) -> float | None:
    windows = [w["ours"] for w in result["idle"] if "ours" in w]
    return med([o["cpu_s"] * 60.0 / o["seconds"] for o in windows])


def compare_table(runs: list[tuple[str, dict[str, Any]]]) -> str:
    """Key medians of several runs (from their --json files) side by side, per N."""
    out = ["", "before / after (medians; each revision's full table is above)"]
    sizes = sorted({int(n) for _, data in runs for n in data["results"]})
    for n in sizes:
        out.append(f"  N = {n}")
        out.append(f"    {'figure':36}" + "".join(f"{rev[:12]:>14}" for rev, _ in runs))
        for label, get in COMPARED:
            cells = [
                fmt(get(data["results"][str(n)])) if str(n) in data["results"] else "-"
                for _, data in runs
            ]
            out.append(f"    {label:36}" + "".join(f"{c:>14}" for c in cells))
    return "\n".join(text.rstrip() for text in out)
