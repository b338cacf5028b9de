"""init, key slots, passwords and exit codes, through the real command."""

import os
import platform
import signal
import subprocess
import sys
import time

import pytest

from pkvc import cli
from pkvc.errors import (EXIT_INTERRUPTED, EXIT_NO_REPOSITORY, EXIT_USAGE, EXIT_WRONG_PASSWORD)


def _tree(path):
    return sorted(str(p.relative_to(path)) + f":{p.stat().st_size}" for p in path.rglob("*"))


def test_init_creates_layout_without_secrets(pkvc):
    result = pkvc.ok("init", "--json")
    info = result.json()
    assert (pkvc.repo / "config").is_file()
    assert (pkvc.repo / "packs").is_dir()
    assert len(list((pkvc.repo / "keys").iterdir())) == 1
    config = (pkvc.repo / "config").read_text()
    assert info["id"] in config
    assert "master" not in config and "password" not in config


def test_init_refuses_existing_repository(initialized):
    before = _tree(initialized.repo)
    result = initialized("init")
    assert result.code == 1
    assert "already exists" in result.err
    assert _tree(initialized.repo) == before


def test_global_options_before_or_after_the_command(initialized, tmp_path):
    other = tmp_path / "other"
    initialized.ok("-r", other, "init")
    initialized.ok("init", "--repo", tmp_path / "third")
    assert (other / "config").is_file() and (tmp_path / "third" / "config").is_file()


def test_wrong_password_exit_12_and_nothing_written(initialized):
    before = _tree(initialized.repo)
    result = initialized("check", env={"PKVC_PASSWORD_FILE": None, "PKVC_PASSWORD": "nope"})
    assert result.code == EXIT_WRONG_PASSWORD
    assert result.err.count("\n") == 1 and "Traceback" not in result.err
    assert _tree(initialized.repo) == before


def test_password_sources(initialized):
    pw = initialized.password_file.read_text().strip()
    initialized.ok("key", "list", env={"PKVC_PASSWORD_FILE": None, "PKVC_PASSWORD": pw})
    initialized.ok("key", "list", env={"PKVC_PASSWORD_FILE": None,
                                       "PKVC_PASSWORD_COMMAND": f"cat {initialized.password_file}"})
    result = initialized("key", "list", env={"PKVC_PASSWORD_FILE": None})
    assert result.code == EXIT_USAGE and "no password given" in result.err


def test_ctrl_c_exits_130_with_one_line(initialized, tmp_path):
    """Ctrl-C while the password command runs: typer hands the interrupt back
    as a return value outside standalone mode, which once made pkvc exit 0."""
    started = tmp_path / "started"
    env = dict(initialized.env, PKVC_PASSWORD_COMMAND=f"sh -c 'touch {started}; sleep 60'")
    del env["PKVC_PASSWORD_FILE"]
    proc = subprocess.Popen([sys.executable, "-m", "pkvc", "check"], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.exists(), "the password command never ran"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED
    assert err.decode().strip() == "pkvc: interrupted"
    initialized.ok("check")


def test_no_repository_exit_10(pkvc, tmp_path):
    result = pkvc("-r", tmp_path / "absent", "check")
    assert result.code == EXIT_NO_REPOSITORY
    assert "pkvc init" in result.err


def test_usage_errors_exit_2(pkvc):
    assert pkvc("frobnicate").code == EXIT_USAGE
    assert pkvc("check", "--no-such-flag").code == EXIT_USAGE
    assert pkvc("check", env={"PKVC_REPOSITORY": None}).code == EXIT_USAGE


def test_key_add_list_remove_passwd(initialized, tmp_path):
    new = tmp_path / "new-password"
    new.write_text("second password\n")
    added = initialized.ok("key", "add", "--new-password-file", new, "--json").json()["id"]
    slots = initialized.ok("key", "list", "--json").json()
    assert {s["id"] for s in slots} >= {added} and len(slots) == 2
    # the new password opens the repository
    initialized.ok("key", "list", env={"PKVC_PASSWORD_FILE": str(new)})
    # passwd replaces the slot that opened it
    third = tmp_path / "third-password"
    third.write_text("third password\n")
    changed = initialized.ok("key", "passwd", "--new-password-file", third, "--json",
                             env={"PKVC_PASSWORD_FILE": str(new)}).json()
    assert changed["removed"] == added
    assert initialized("key", "list", env={"PKVC_PASSWORD_FILE": str(new)}).code == EXIT_WRONG_PASSWORD
    initialized.ok("key", "list", env={"PKVC_PASSWORD_FILE": str(third)})
    # remove the original; the last one cannot be removed
    original = [s["id"] for s in initialized.ok("key", "list", "--json").json() if s["current"]][0]
    initialized.ok("key", "remove", original, env={"PKVC_PASSWORD_FILE": str(third)})
    last = initialized("key", "remove", changed["id"], env={"PKVC_PASSWORD_FILE": str(third)})
    assert last.code == EXIT_USAGE and "last key slot" in last.err
    assert len(os.listdir(initialized.repo / "keys")) == 1


def test_help_lists_exit_codes(pkvc):
    out = pkvc.ok("--help").out
    assert "130" in out and "wrong password" in out



_ARENA_PROBE = r"""
import ctypes, sys, threading
from pkvc import cli
capped = cli.fewer_malloc_arenas() if sys.argv[1] == "capped" else None
held, ready = [], threading.Barrier(7)
def allocate():
    held.append([bytes(100_000) for _ in range(20)])  # malloc'd, under mmap's threshold
    ready.wait()  # all alive at once: each wants an arena of its own
threads = [threading.Thread(target=allocate) for _ in range(6)]
for t in threads: t.start()
ready.wait()
for t in threads: t.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
out = libc.fopen(sys.argv[2].encode(), b"w")
libc.malloc_info(0, ctypes.c_void_p(out))
libc.fclose(ctypes.c_void_p(out))
print(capped)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc arenas are glibc's")
@pytest.mark.parametrize("mode", ["capped", "default"])
def test_snapshot_caps_glibcs_malloc_arenas(tmp_path, mode):
    report = tmp_path / "malloc.xml"
    done = subprocess.run([sys.executable, "-c", _ARENA_PROBE, mode, str(report)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    heaps = report.read_text().count("<heap nr=")
    if mode == "capped":
        assert done.stdout.strip() == "True" and heaps <= cli.MALLOC_ARENAS
    else:  # the probe is sound: without the cap the threads spread over more arenas
        assert heaps > cli.MALLOC_ARENAS
