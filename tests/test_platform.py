"""`import driller` refuses, by name, the systems driller cannot run on; `driller info`
probes every kernel feature driller uses, for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from driller import _linux, _platform
from driller.errors import DrillerError, UnsupportedPlatformError


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("release, expected", [
    ("6.18.44-fc-v657", (6, 18)), ("5.16", (5, 16)), ("5.4.0-150-generic", (5, 4)),
    ("4.19.0+", (4, 19)), ("10.2rc1", (10, 2)), ("weird", None), ("6.x", None)])
def test_kernel_version_parses_releases(release, expected):
    assert _platform.kernel_version(release) == expected


def test_problems_name_what_is_missing():
    assert _platform.problems("linux", "x86_64", "6.18.0") == []
    # aarch64 is refused, with the reason (mmpi's rings need x86-64's store order)
    (arm,) = _platform.problems("linux", "aarch64", "5.16.1")
    assert "'aarch64'" in arm and "x86_64 only" in arm and "ordered stores" in arm
    (mac,) = _platform.problems("darwin", "arm64", "23.1.0")
    assert "Linux only" in mac and "'darwin'" in mac
    (arch,) = _platform.problems("linux", "ppc64le", "6.1.0")
    assert "'ppc64le'" in arch and "x86_64 only" in arch
    # an old kernel is asked for the feature itself: a backport is accepted...
    assert _platform.problems("linux", "x86_64", "5.10.0-rhel", probe=lambda: None) == []
    # ...a kernel without it is refused with the reason
    (old,) = _platform.problems("linux", "x86_64", "5.10.0", probe=lambda: "ENOSYS")
    assert "Linux 5.10.0" in old and ">= 5.16" in old and "futex_waitv: ENOSYS" in old


def test_error_is_an_importerror_and_a_drillererror():
    assert issubclass(UnsupportedPlatformError, ImportError)
    assert issubclass(UnsupportedPlatformError, DrillerError)


def test_import_on_another_os_raises_a_clear_importerror():
    r = _run("""
        import sys
        sys.platform = "darwin"
        try:
            import driller
        except ImportError as e:
            print(type(e).__name__, e)
        else:
            print("imported")
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("UnsupportedPlatformError driller cannot run on this system")
    assert "Linux only" in r.stdout and "'darwin'" in r.stdout


@pytest.mark.parametrize("machine", ["riscv64", "aarch64"])
def test_import_on_another_machine_raises_before_any_syscall_number_is_used(machine):
    """aarch64 too: it is weakly ordered and mmpi's rings publish with plain stores, so
    `import driller` says so rather than run there (docs/mmpi.md, "Machines")."""
    r = _run(f"""
        import os
        real = os.uname()
        os.uname = lambda: os.uname_result((real.sysname, real.nodename, real.release,
                                            real.version, "{machine}"))
        try:
            import driller
        except ImportError as e:
            print(type(e).__name__, e)
        try:
            import driller._linux
        except ImportError as e:
            print("linux:", e)
    """)
    assert r.returncode == 0, r.stderr
    first, *rest = r.stdout.splitlines()
    assert first.startswith("UnsupportedPlatformError driller cannot run on this system")
    assert f"'{machine}'" in first and "x86_64 only" in first and "ordered stores" in first
    assert first.endswith("It needs Linux >= 5.16 on x86_64.")
    # even reached directly, the syscall layer is refused (riscv64 never taken for aarch64)
    (second,) = rest
    assert second.startswith("linux:") and f"'{machine}'" in second


def test_old_kernel_without_futex_waitv_is_refused_by_a_real_probe():
    """A kernel that reports 5.10 and really lacks futex_waitv (made so by a seccomp
    filter answering ENOSYS, kept across exec) is refused at import, by name."""
    child = textwrap.dedent("""
        import os
        real = os.uname()
        os.uname = lambda: os.uname_result((real.sysname, real.nodename, "5.10.0-old",
                                            real.version, real.machine))
        try:
            import driller
        except ImportError as e:
            print(type(e).__name__, e)
        else:
            print("imported")
    """)
    r = _run(f"""
        import errno, os, sys
        from driller import _linux
        _linux.deny_syscalls(["futex_waitv"], errno.ENOSYS)
        os.execv(sys.executable, [sys.executable, "-c", {child!r}])
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("UnsupportedPlatformError"), r.stdout
    assert "Linux 5.10.0-old" in r.stdout and "futex_waitv" in r.stdout


def test_old_kernel_version_with_the_feature_backported_imports():
    r = _run("""
        import os
        real = os.uname()
        os.uname = lambda: os.uname_result((real.sysname, real.nodename, "5.10.0-backport",
                                            real.version, real.machine))
        import driller
        print("imported", driller.zeros(3).sum())
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "imported 0.0"


def test_driller_info_lists_every_kernel_feature_probed():
    r = subprocess.run([sys.executable, "-m", "driller", "info", "--json"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    system = json.loads(r.stdout)["system"]
    assert system["kernel"] == os.uname().release and system["machine"] == os.uname().machine
    names = [f["name"] for f in system["features"]]
    assert names == [n for n, *_ in _linux.KERNEL_FEATURES]
    assert "futex_waitv" in names and "process_vm_readv" in names
    # this machine kind runs driller's whole suite: every feature is there
    assert all(f["available"] for f in system["features"]), system["features"]
    text = subprocess.run([sys.executable, "-m", "driller", "info"], capture_output=True,
                          text=True, timeout=60).stdout
    assert "kernel features:" in text and "futex_waitv" in text


def test_driller_info_reports_a_denied_feature_as_missing():
    """process_vm_readv refused as a container profile does: `driller info` says
    MISSING with the errno, the other features stay available."""
    r = _run("""
        import errno, json
        from driller import _linux, _info
        _linux.deny_syscalls(["process_vm_readv"], errno.EPERM)
        print(json.dumps(_info.system()["features"]))
    """)
    assert r.returncode == 0, r.stderr
    feats = {f["name"]: f for f in json.loads(r.stdout)}
    assert not feats["process_vm_readv"]["available"]
    assert "EPERM" in feats["process_vm_readv"]["detail"]
    assert all(f["available"] for n, f in feats.items() if n != "process_vm_readv")

