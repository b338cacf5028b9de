"""`python -m bench`: the command line of the benchmark.

    python -m bench                 # ~2 GB realistic tree, pkvc vs restic vs borg
    python -m bench --quick         # ~100 MB, a few thousand files: a couple of minutes
    python -m bench --scale         # one million small files: first, unchanged, gc
    python -m bench --scale --files 200000
    python -m bench --tools pkvc --profile   # pkvc under py-spy, top functions per step

Results: a plain-text table on stdout, and JSON in --results
(bench-results/latest.json, or scale-latest.json / quick-latest.json, plus a
time-stamped copy). Scratch data (datasets, repositories, restores, logs)
lives under --scratch, /var/tmp/pkvc-bench by default, never in the repo.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench import dataset, profiling, report, runner, tools as tools_mod

DEFAULT_SCRATCH = os.environ.get("PKVC_BENCH_SCRATCH", "/var/tmp/pkvc-bench")
PASSWORD = "correct horse battery staple, pkvc bench\n"


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="about 100 MB and a few thousand files, for development")
    mode.add_argument("--scale", action="store_true",
                      help="a tree of --files small files: first and unchanged snapshot, gc")
    p.add_argument("--files", type=int, default=1_000_000,
                   help="number of files in --scale mode (default 1,000,000)")
    p.add_argument("--size", type=_size, default=None,
                   help="dataset size, e.g. 2G (default 2G; 100M with --quick)")
    p.add_argument("--small-files", type=int, default=None,
                   help="at most this many small files (default 60000; 4000 with --quick)")
    p.add_argument("--small-fraction", type=float, default=0.3,
                   help="share of the dataset in small files (default 0.3; the rest is large files)")
    p.add_argument("--large-files", type=int, default=4, help="number of large files (default 4)")
    p.add_argument("--seed", type=int, default=1, help="dataset seed (default 1)")
    p.add_argument("--tools", default="pkvc,restic,borg",
                   help="comma-separated tools to run (default pkvc,restic,borg)")
    p.add_argument("--pkvc", default=None, help="the pkvc executable (default: beside this Python)")
    p.add_argument("--scratch", type=Path, default=Path(DEFAULT_SCRATCH),
                   help=f"scratch directory for data and repositories (default {DEFAULT_SCRATCH}; "
                   "env PKVC_BENCH_SCRATCH)")
    p.add_argument("--results", type=Path, default=None,
                   help="where JSON results go (default bench-results/ at the repository's top)")
    p.add_argument("--timeout", type=float, default=None,
                   help="give up on any single command after this many seconds")
    p.add_argument("--keep-restores", action="store_true", help="keep the restored trees")
    p.add_argument("--no-install", action="store_true",
                   help="do not apt-get install restic/borgbackup when missing")
    p.add_argument("--profile", action="store_true",
                   help="run pkvc's commands under py-spy and print the top functions per step "
                   "(timings of profiled commands are inflated; use with --tools pkvc)")
    p.add_argument("--profile-steps", default="snapshot1,snapshot2,snapshot3,restore,forget_gc,check",
                   help="steps to profile with --profile")
    return p.parse_args(argv)


def machine_info(scratch: Path, tools: list) -> dict:
    info = {"nproc": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "hostname": platform.node()}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / (1 << 20), 1)
                break
    except OSError:
        pass
    df = subprocess.run(["df", "-hT", str(scratch)], capture_output=True, text=True)
    if df.returncode == 0 and len(df.stdout.splitlines()) > 1:
        fields_ = df.stdout.splitlines()[1].split()
        info["disk"] = {"device": fields_[0], "fstype": fields_[1], "size": fields_[2],
                        "available": fields_[4]}
        dev = os.path.basename(fields_[0])
        rot = Path(f"/sys/block/{dev}/queue/rotational")
        if rot.exists():
            info["disk"]["rotational"] = rot.read_text().strip() == "1"
    info["versions"] = {t.name: t.version() for t in tools}
    libs = {}
    for mod in ("zstandard", "nacl", "rocksdict", "fastcdc", "cryptography"):
        try:
            from importlib.metadata import version
            libs[mod] = version({"nacl": "PyNaCl"}.get(mod, mod))
        except Exception:
            pass
    info["python_libraries"] = libs
    info["load_average_at_start"] = os.getloadavg()
    return info


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    mode = "scale" if args.scale else "quick" if args.quick else "full"
    names = [t.strip() for t in args.tools.split(",") if t.strip()]
    scratch = args.scratch.resolve()
    repo_root = Path(__file__).resolve().parent.parent
    if args.results is None:
        args.results = repo_root / "bench-results"
    if scratch == repo_root or repo_root in scratch.parents:
        log(f"bench: --scratch {scratch} is inside the repository; choose a directory outside it")
        return 2
    scratch.mkdir(parents=True, exist_ok=True)

    problems = {} if args.no_install else tools_mod.ensure_installed(names, log)
    for name, why in problems.items():
        log(f"bench: leaving out {name}: {why}")
    names = [n for n in names if n not in problems and (n == "pkvc" or shutil.which(n))]
    if not names:
        log("bench: no tool to run")
        return 1

    run_dir = scratch / (f"run-{mode}-profile" if args.profile else f"run-{mode}")
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    password_file = run_dir / "password"
    password_file.write_text(PASSWORD)
    password_file.chmod(0o600)
    tools = [tools_mod.make(n, run_dir / n, password_file, args.pkvc) for n in names]
    for t in tools:
        t.prepare()

    exclude = [str(scratch), str(repo_root / ".git")]
    if args.scale:
        data, ds = dataset.scale_tree(scratch, args.files, args.seed, log)
        steps, mutations = runner.SCALE_STEPS, None
    else:
        size = args.size or (100 << 20 if args.quick else 2 << 30)
        small_files = args.small_files or (4000 if args.quick else 60000)
        spec = dataset.Spec(size, args.small_fraction, small_files,
                            2 if args.quick and args.large_files == 4 else args.large_files, args.seed)
        pristine, ds = dataset.pristine(spec, scratch, exclude, log)
        data = run_dir / "data"
        log(f"dataset: copying {pristine} to {data} ...")
        dataset.copy_tree(pristine, data)
        steps = runner.STEPS
        mutations = (dataset.Mutations(edits=50, adds=200, deletes=100) if args.quick
                     else dataset.Mutations())

    py_spy = profile_dir = None
    if args.profile:
        py_spy = profiling.ensure_py_spy(log)
        profile_dir = args.results.resolve() / "profile" / f"{mode}-{time.strftime('%Y%m%d-%H%M%S')}"
    ctx = runner.Context(data=data, logs=run_dir / "logs", seed=args.seed, mutations=mutations,
                         timeout=args.timeout, keep_restores=args.keep_restores, py_spy=py_spy,
                         profile_dir=profile_dir,
                         profile_steps=set(args.profile_steps.split(",")), log=log)

    machine = machine_info(scratch, tools)
    log(f"bench ({mode}): {', '.join(names)} on {machine.get('nproc')} cores, "
        f"load {machine['load_average_at_start'][0]:.2f}; scratch {run_dir}")
    started = time.time()
    results, mutated = runner.run_all(tools, steps, ctx)

    table = report.tables(results, names, steps)
    checks = report.targets(results, steps, scale=args.scale)
    title = {"full": "pkvc benchmark", "quick": "pkvc benchmark (--quick)",
             "scale": f"pkvc benchmark (--scale, {args.files:,} files)"}[mode]
    ds_line = (f"dataset: {ds.get('files', ds.get('small_files')):,} small files"
               + (f" + {len(ds['large'])} large files" if "large" in ds else "")
               + f", {(ds.get('total_bytes') or ds.get('bytes')) / (1 << 20):.0f} MiB; seed {args.seed}")
    text = "\n".join([f"{title} — {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", ds_line,
                      "versions: " + "; ".join(machine["versions"].values()), "", table, "",
                      report.render_targets(checks)])
    if args.profile:
        parts = []
        for step in steps:
            for r in results.get("pkvc", {}).get(step, {}).get("runs", []):
                if "profile" in r:
                    parts.append(profiling.render(r["profile"], f"{runner.LABELS[step]}: "
                                                  + " ".join(r["command"])))
        text += "\n\nPROFILES (py-spy)\n\n" + "\n\n".join(parts)
    print(text, flush=True)

    doc = {"mode": mode, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
           "duration_s": round(time.time() - started, 1), "args": {k: str(v) for k, v in vars(args).items()},
           "machine": machine, "dataset": ds, "mutations": mutated, "steps": steps,
           "results": results, "targets": checks, "table": text}
    args.results.mkdir(parents=True, exist_ok=True)
    name = {"full": "latest", "quick": "quick-latest", "scale": "scale-latest"}[mode]
    if args.profile:
        name = f"profile-{mode}"
    body = json.dumps(doc, indent=1, default=str)
    (args.results / f"{name}.json").write_text(body)
    (args.results / f"{name}.txt").write_text(text + "\n")
    (args.results / f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(started))}-{name}.json").write_text(body)
    log(f"results: {args.results / (name + '.json')}; logs and repositories: {run_dir}")

    failed = [f"{t} {s}" for t in results for s, r in results[t].items() if r.get("status") == "failed"]
    if failed:
        log("bench: some steps failed: " + ", ".join(failed))
        return 1
    return 0
