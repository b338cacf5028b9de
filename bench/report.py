"""Tables, ratios and the issue's targets, as plain text."""

from __future__ import annotations

from bench.runner import LABELS

MiB = 1 << 20

METRICS = [
    ("wall", "WALL TIME (s)", lambda r: r["wall"]),
    ("cpu", "CPU TIME, user+sys (s)", lambda r: r["cpu"]),
    ("rss", "PEAK RSS (MiB)", lambda r: r["maxrss_mib"]),
    ("repo", "REPOSITORY SIZE AFTER THE STEP (MiB)", lambda r: r["repo"]["apparent"] / MiB),
]

# (step, ratio bound against restic's wall time)
WALL_TARGETS = [("snapshot1", 0.8), ("snapshot2", 0.5), ("snapshot3", 0.5), ("restore", 0.7),
                ("forget_gc", 1.0), ("check", 1.0)]


def value(results: dict, tool: str, step: str, metric: str):
    r = results.get(tool, {}).get(step)
    if r is None or r.get("status") != "ok":
        return None
    for key, _title, get in METRICS:
        if key == metric:
            return get(r)
    raise KeyError(metric)


def _cell(results: dict, tool: str, step: str, metric: str) -> str:
    r = results.get(tool, {}).get(step)
    if r is None:
        return "-"
    if r.get("status") == "n/a":
        return "n/a"
    if r.get("status") == "skipped":
        return "skip"
    if r.get("status") != "ok":
        return "FAIL"
    v = value(results, tool, step, metric)
    return f"{v:.2f}" if v < 100 else f"{v:.0f}" if v < 100000 else f"{v:.3g}"


def _mib(v: float) -> str:
    return f"{v * 1024:.1f} KiB" if v < 1 else f"{v:.1f} MiB"


def _ratio(a, b) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def tables(results: dict, tools: list[str], steps: list[str]) -> str:
    others = [t for t in tools if t != "pkvc"] if "pkvc" in tools else []
    out = []
    width = max(len(LABELS[s]) for s in steps) + 2
    for key, title, _get in METRICS:
        head = f"{title:<{width}}" + "".join(f"{t:>10}" for t in tools) + \
            "".join(f"{'pkvc/' + o:>14}" for o in others)
        out.append(head)
        out.append("-" * len(head))
        for step in steps:
            row = f"{LABELS[step]:<{width}}" + "".join(f"{_cell(results, t, step, key):>10}" for t in tools)
            p = value(results, "pkvc", step, key) if others else None
            row += "".join(f"{_ratio(p, value(results, o, step, key)):>14}" for o in others)
            out.append(row)
        out.append("")
    notes = []
    for t in tools:
        for step in steps:
            r = results.get(t, {}).get(step, {})
            if r.get("status") in ("failed", "n/a", "skipped"):
                notes.append(f"  {t} {LABELS[step]}: {r.get('status')}: {r.get('error') or r.get('why', '')}")
    if notes:
        out.append("Notes:")
        out.extend(notes)
        out.append("")
    load = []
    for step in steps:
        vals = [results[t][step].get("others_cores") for t in tools
                if step in results.get(t, {}) and results[t][step].get("others_cores") is not None]
        if vals:
            load.append(f"{LABELS[step]}: {max(vals):.2f}")
    if load:
        out.append("Other processes' CPU use during the step (cores, worst of the tools): "
                   + "; ".join(load))
    return "\n".join(out)


def targets(results: dict, steps: list[str], scale: bool = False) -> list[dict]:
    """Each target of issue 6 that this run can judge, with pass/fail."""
    checks = []

    def add(name: str, actual, bound, detail: str, info: bool = False):
        if actual is None or bound is None:
            checks.append({"target": name, "status": "n/a", "detail": detail or "not measured",
                           "info": info})
        else:
            status = "info" if info else "PASS" if actual <= bound else "FAIL"
            checks.append({"target": name, "status": status, "actual": actual, "bound": bound,
                           "detail": detail, "info": info})

    if scale:
        p, r = value(results, "pkvc", "snapshot2", "rss"), value(results, "restic", "snapshot2", "rss")
        add("scale: unchanged re-snapshot peak RSS <= restic's", p, r,
            f"pkvc {p:.0f} MiB vs restic {r:.0f} MiB" if p is not None and r is not None else "")
        for step in steps:
            if step == "init":
                continue
            p, r = value(results, "pkvc", step, "wall"), value(results, "restic", step, "wall")
            add(f"scale: {LABELS[step]} wall time, pkvc/restic (no target)",
                p / r if p and r else None, 1.0,
                f"{p / r:.2f}x ({p:.1f} s vs {r:.1f} s)" if p and r else "", info=True)
        return checks

    for step, bound in WALL_TARGETS:
        if step not in steps:
            continue
        p, r = value(results, "pkvc", step, "wall"), value(results, "restic", step, "wall")
        ratio = p / r if p is not None and r else None
        label = LABELS[step] + (" (vs restic forget --prune)" if step == "forget_gc" else "")
        add(f"{label} wall <= {bound}x restic", ratio, bound,
            f"{ratio:.2f}x ({p:.2f} s vs {r:.2f} s)" if ratio is not None else "")
    for step in steps:
        p = value(results, "pkvc", step, "repo")
        rs = [value(results, t, step, "repo") for t in ("restic", "borg")]
        rs = [x for x in rs if x is not None]
        bound = min(rs) if rs else None
        add(f"repository size after {LABELS[step]} <= min(restic, borg)", p, bound,
            f"{_mib(p)} vs {_mib(bound)} ({p / bound:.2f}x)" if p is not None and bound else "")
    for step in steps:
        p, r = value(results, "pkvc", step, "rss"), value(results, "restic", step, "rss")
        add(f"peak RSS, {LABELS[step]} <= restic's", p, r,
            f"{p:.0f} MiB vs {r:.0f} MiB ({p / r:.2f}x)" if p is not None and r else "")
    return checks


def render_targets(checks: list[dict]) -> str:
    width = max(len(c["target"]) for c in checks) + 2 if checks else 10
    lines = ["TARGETS (issue 6)", "-" * (width + 30)]
    for c in checks:
        lines.append(f"{c['target']:<{width}}{c['status']:<6}{c.get('detail', '')}")
    passed = sum(c["status"] == "PASS" for c in checks)
    failed = sum(c["status"] == "FAIL" for c in checks)
    unmeasured = sum(c["status"] == "n/a" and not c.get("info") for c in checks)
    lines.append(f"targets met: {passed} of {passed + failed + unmeasured} ({failed} missed, "
                 f"{unmeasured} not measured)")
    return "\n".join(lines)
