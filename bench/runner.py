"""Running the steps: step-major, tools rotated, everything measured.

Steps run in step-major order — every tool does step 1, then every tool
does step 2, ... — with the tools' order rotated by one at each step, so
no tool is always first after a mutation or always last on a warm cache.
The mutations are applied once, between the unchanged and the mutated
re-snapshot, so all tools back up exactly the same bytes. Nothing is dropped
from the page cache: the data is read once before the first snapshot and
every run is warm-cache. Before each command the harness syncs (outside the
measure), so that no tool's time includes the writeback of what the tool
before it wrote: each tool makes its own writes durable or not, as it does.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import dataset, measure, profiling
from bench.tools import Tool

STEPS = ["init", "snapshot1", "snapshot2", "snapshot3", "restore", "forget_gc", "check"]
SCALE_STEPS = ["init", "snapshot1", "snapshot2", "forget_gc"]
LABELS = {
    "init": "init",
    "snapshot1": "first snapshot",
    "snapshot2": "unchanged re-snapshot",
    "snapshot3": "mutated re-snapshot",
    "restore": "restore latest",
    "forget_gc": "forget oldest + gc",
    "check": "check, full data read",
}
# exit codes that still mean "done": restic backup 3 = some source files unreadable
OK_CODES = {"restic": {0, 3}, "pkvc": {0, 3}, "borg": {0, 1}}


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields_ = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields_[3] + (fields_[4] if len(fields_) > 4 else 0)
    return sum(fields_[:8]) - idle, sum(fields_[:8])


@dataclass
class Context:
    data: Path
    logs: Path
    seed: int
    mutations: dataset.Mutations | None = None
    timeout: float | None = None
    keep_restores: bool = False
    py_spy: str | None = None        # profile pkvc's commands with this py-spy
    profile_dir: Path | None = None
    profile_steps: set[str] = field(default_factory=set)
    log: callable = print


def _parse_output(tool: str, text: str):
    """pkvc prints one JSON document; restic's backup --json ends with a summary line."""
    text = text.strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        pass
    for line in reversed(text.splitlines()):
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and doc.get("message_type") in ("summary", None):
            return doc
    return None


def run_step(tool: Tool, step: str, nsnap: int, ctx: Context) -> dict:
    spec = tool.step(step, ctx.data, nsnap)
    if not spec.available:
        return {"status": "n/a", "why": spec.why_not}
    if step == "restore":
        shutil.rmtree(tool.restore_dir(), ignore_errors=True)
        tool.restore_dir().mkdir(parents=True)
    sync_before = _sync()
    runs, ok = [], True
    load_before = os.getloadavg()[0]
    j0 = _cpu_jiffies()
    started = time.perf_counter()
    for i, argv in enumerate(spec.commands):
        profile_out, command = None, argv
        if ctx.py_spy and tool.name == "pkvc" and step in ctx.profile_steps:
            profile_out = ctx.profile_dir / f"{step}-{i}.raw.txt"
            argv = profiling.wrap(ctx.py_spy, argv, profile_out)
        if i:
            sync_before += _sync()
        r = measure.run(argv, env=tool.env(), cwd=spec.cwd,
                        log_prefix=ctx.logs / f"{tool.name}-{step}-{i}", timeout=ctx.timeout)
        entry = r.to_json()
        entry["command"] = [Path(command[0]).name, *command[1:]]
        parsed = _parse_output(tool.name, r.stdout)
        if parsed is not None:
            entry["parsed"] = parsed
        if profile_out is not None:
            entry["profile"] = profiling.summarise(profile_out)
            entry["profile_raw"] = str(profile_out)
        runs.append(entry)
        if r.timed_out or r.returncode not in OK_CODES.get(tool.name, {0}):
            ok = False
            break
    elapsed = time.perf_counter() - started
    j1 = _cpu_jiffies()
    hz = os.sysconf("SC_CLK_TCK")
    result = {
        "status": "ok" if ok else "failed",
        "wall": sum(r["wall"] for r in runs),
        "cpu": sum(r["cpu"] for r in runs),
        "user": sum(r["user"] for r in runs),
        "sys": sum(r["sys"] for r in runs),
        "maxrss_mib": max(r["maxrss_kib"] for r in runs) / 1024,
        "repo": measure.tree_size(tool.repo),
        "cache": measure.tree_size(tool.cache),
        "load1_before": load_before,
        "sync_before_s": round(sync_before, 3),
        "runs": runs,
    }
    if j0 and j1 and elapsed > 0:
        machine_busy = (j1[0] - j0[0]) / hz
        # CPU-seconds used by everything else on the machine, per second of the step
        result["others_cores"] = round(max(0.0, machine_busy - result["cpu"]) / elapsed, 2)
    if not ok:
        last = runs[-1]
        result["error"] = (f"exit {last['returncode']}{' (timeout)' if last['timed_out'] else ''}: "
                           + (last["stderr"].strip().splitlines() or [""])[-1][:300])
    if step == "restore" and ok:
        root = tool.restored_root(ctx.data)
        ctx.log(f"    verifying {tool.name}'s restore against the source ...")
        result["verify"] = dataset.compare_trees(ctx.data, root)
        if not result["verify"]["identical"]:
            result["status"] = "failed"
            result["error"] = "restore differs from the source: " + "; ".join(result["verify"]["first"][:3])
    return result


def _sync() -> float:
    """Write back every dirty page (not measured): a first snapshot or a
    restore leaves gigabytes that the kernel writes back over the next half
    minute, and the tool that came next paid for it (pkvc's first snapshot,
    third of three: 2 s more wall and 2.4 s more system time after 2 GiB
    were written and not synced, than after a sync). Returns the seconds it took."""
    started = time.perf_counter()
    os.sync()
    return time.perf_counter() - started


def run_all(tools: list[Tool], steps: list[str], ctx: Context) -> tuple[dict, dict | None]:
    """Run every step for every tool; returns (results by tool and step, mutations done)."""
    results: dict[str, dict] = {t.name: {} for t in tools}
    broken: dict[str, str] = {}
    mutations_done = None
    nsnap = 0
    for k, step in enumerate(steps):
        if step == "snapshot1":
            ctx.log("warming the page cache with the data ...")
            dataset.warm(ctx.data)
        if step == "snapshot3" and ctx.mutations is not None:
            ctx.log("applying the mutations (once, for every tool) ...")
            mutations_done = dataset.mutate(ctx.data, ctx.mutations, ctx.seed)
        if step.startswith("snapshot"):
            nsnap += 1
        order = tools[k % len(tools):] + tools[:k % len(tools)]
        for tool in order:
            if tool.name in broken:
                results[tool.name][step] = {"status": "skipped",
                                            "why": f"{LABELS[broken[tool.name]]} failed"}
                continue
            ctx.log(f"  {LABELS[step]:<24} {tool.name} ...")
            res = run_step(tool, step, nsnap, ctx)
            results[tool.name][step] = res
            if res["status"] == "ok":
                ctx.log(f"  {LABELS[step]:<24} {tool.name}: {res['wall']:.2f} s wall, "
                        f"{res['cpu']:.2f} s CPU, {res['maxrss_mib']:.0f} MiB peak, "
                        f"repo {res['repo']['apparent'] / 2**20:.1f} MiB")
            else:
                ctx.log(f"  {LABELS[step]:<24} {tool.name}: {res['status'].upper()} "
                        f"{res.get('error') or res.get('why', '')}")
            if res["status"] == "failed" and step in ("init", "snapshot1"):
                broken[tool.name] = step
        if step == "restore" and not ctx.keep_restores:
            _remove_restores(tools)
    return results, mutations_done


def _remove_restores(tools: list[Tool]) -> None:
    """Delete the restored trees once every tool has restored, not between
    two tools: ext4 scans past recently deleted inodes when it allocates new
    ones (`recently_deleted`, ~half the kernel time of a restore right after
    another tool's tree was removed), which slowed whichever tool came next."""
    for tool in tools:
        shutil.rmtree(tool.restore_dir(), ignore_errors=True)
