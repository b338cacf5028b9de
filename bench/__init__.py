"""Side-by-side benchmark of pkvc against restic and borg (`python -m bench`).

Modules:

- `dataset`  — a realistic tree built from files already on the machine, the
  mutations applied before the third snapshot, and the one-million-file tree
  of `--scale` mode; all deterministic given a seed.
- `measure`  — runs one command and measures wall time, CPU time (user+sys
  of the child and its waited-for descendants) and peak RSS, from `wait4`.
- `tools`    — the same steps spelled for pkvc, restic and borg.
- `runner`   — orders the steps (step-major, tools rotated each step) and
  collects results.
- `report`   — the plain-text tables, the target checks and the JSON.
- `profiling` — py-spy summaries (`--profile`).

Nothing here is imported by pkvc; nothing large is written inside the repo
(datasets and repositories live under `--scratch`, /var/tmp/pkvc-bench by
default; results under `--results`, the repository's bench-results/ by
default, git-ignored).
"""
