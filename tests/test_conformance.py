"""tools/conformance.py (`make conformance`): its parser on captured unittest output,
and whole runs of a small stand-in suite under `driller run --mpi4py` (real ranks:
results summed over ranks, a hang stopped and located, a crash reported).
No network: the real mpi4py suite is only fetched by `make conformance`."""

import importlib.util
import json
import os
import re
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "conformance", os.path.join(ROOT, "tools", "conformance.py"))
conformance = importlib.util.module_from_spec(_spec)
sys.modules["conformance"] = conformance     # dataclasses look their module up
_spec.loader.exec_module(conformance)

# every test module of the mpi4py 4.1.2 sdist's test/ folder
SUITE_FILES = """test_address test_attributes test_buffer test_cco_buf test_cco_buf_inter
test_cco_nb_buf test_cco_nb_vec test_cco_ngh_buf test_cco_ngh_obj test_cco_obj
test_cco_obj_inter test_cco_pr_buf test_cco_pr_ngh_buf test_cco_pr_vec test_cco_vec
test_cco_vec_inter test_cffi test_comm test_comm_inter test_comm_topo test_ctypes
test_datatype test_doc test_dynproc test_environ test_errhandler test_errorcode
test_exceptions test_file test_grequest test_group test_handle test_info test_io
test_mpiabi test_mpiapi test_mpimem test_msgspec test_msgzero test_objmodel test_op
test_p2p_buf test_p2p_buf_matched test_p2p_buf_part test_p2p_obj test_p2p_obj_matched
test_pack test_package test_pickle test_request test_rma test_rma_nb test_session
test_spawn test_status test_subclass test_threads test_toplevel test_ulfm test_util_dtlib
test_util_pkl5 test_util_pool test_util_sync test_win""".split()


def test_regex_selects_exactly_the_listed_modules():
    # main.py searches -i REGEX in each file name (its TestLoader._match_path)
    search = re.compile(conformance.REGEX).search
    chosen = {f[len("test_"):] for f in SUITE_FILES if search(f + ".py")}
    assert chosen == set(conformance.MODULES)
    assert len(conformance.MODULES) == 43
    # prefixes of listed names must not pull their longer relatives, nor the reverse
    for name in ("test_p2p_obj_matched_x.py", "test_comm.pyc", "xtest_comm.py",
                 "test_cco_pr_buf.py", "test_p2p_buf_part.py", "test_comm_topo2.py"):
        assert not search(name), name


CAPTURED_Q = textwrap.dedent("""\
    ======================================================================
    ERROR: test_comm (unittest.loader._FailedTest.test_comm)
    ----------------------------------------------------------------------
    ImportError: Failed to import test module: test_comm
    Traceback (most recent call last):
      File "/usr/lib/python3.11/unittest/loader.py", line 419, in _find_test_path
        module = self._get_module_from_name(name)
                 ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
      File "/x/test/test_comm.py", line 12, in <module>
        class TestCommNull(unittest.TestCase):
      File "/x/src/driller/MPI.py", line 90, in __getattr__
        raise _NotImpl(f"MPI.{name} is not implemented by driller.MPI (point-to-point, "
    driller.errors.MmpiNotImplementedError: MPI.get_vendor is not implemented by driller.MPI (point-to-point, collectives); use mpi4py for it


    ======================================================================
    ERROR: testWaitsome (test_request.TestRequest.testWaitsome)
    ----------------------------------------------------------------------
    Traceback (most recent call last):
      File "/x/test/test_request.py", line 88, in testWaitsome
        MPI.Request.Waitsome(reqs)
        ^^^^^^^^^^^^^^^^^^^^
    AttributeError: type object 'Request' has no attribute 'Waitsome'

    ======================================================================
    ERROR: testPickle (test_pickle.TestPickle.testPickle)
    ----------------------------------------------------------------------
    Traceback (most recent call last):
      File "/x/test/test_pickle.py", line 3, in f
        raise KeyError(1)
    KeyError: 1

    During handling of the above exception, another exception occurred:

    Traceback (most recent call last):
      File "/x/test/test_pickle.py", line 5, in testPickle
        g()
    TypeError: cannot pickle 'Comm' object
    with a second line

    ======================================================================
    FAIL: testGetCount (test_status.TestStatus.testGetCount)
    ----------------------------------------------------------------------
    Traceback (most recent call last):
      File "/x/test/test_status.py", line 40, in testGetCount
        self.assertEqual(count, 7)
    AssertionError: 3 != 7

    ----------------------------------------------------------------------
    Ran 41 tests in 2.345s

    FAILED (failures=1, errors=3, skipped=5, expected failures=1)
    conformance-rank: main.py exited with 1
    """)


def test_parse_quiet_output():
    r = conformance.parse_log(CAPTURED_Q, rank=1)
    assert (r.rank, r.run, r.failed, r.errors, r.skipped, r.xfail) == (1, 41, 1, 3, 5, 1)
    assert r.passed == 41 - 1 - 3 - 5 - 1
    assert r.summary and r.exit_code == 1
    assert [(kind, tid) for kind, tid, _ in r.problems] == [
        ("ERROR", "unittest.loader._FailedTest.test_comm"),
        ("ERROR", "test_request.TestRequest.testWaitsome"),
        ("ERROR", "test_pickle.TestPickle.testPickle"),
        ("FAIL", "test_status.TestStatus.testGetCount")]
    lines = [line for _, _, line in r.problems]
    assert lines[0].startswith("driller.errors.MmpiNotImplementedError: MPI.get_vendor ")
    assert lines[1] == "AttributeError: type object 'Request' has no attribute 'Waitsome'"
    assert lines[2] == "TypeError: cannot pickle 'Comm' object"      # the last exception
    assert lines[3] == "AssertionError: 3 != 7"
    assert [conformance.reason(x) for x in lines] == [
        "missing MPI.get_vendor", "missing Request.Waitsome",
        "TypeError: cannot pickle 'Comm' object", "AssertionError: N != N"]
    assert [conformance.test_module(t) for _, t, _ in r.problems] == [
        "test_comm", "test_request", "test_pickle", "test_status"]


SUBTESTS = textwrap.dedent("""\
    ======================================================================
    ERROR: testPersistent (test_p2p_buf.TestP2PBufSelf.testPersistent) (s=0, typecode='b')
    ----------------------------------------------------------------------
    Traceback (most recent call last):
      File "/x/test/test_p2p_buf.py", line 9, in testPersistent
    AttributeError: module 'driller.MPI' has no attribute 'BSEND_OVERHEAD'

    ======================================================================
    ERROR: testPersistent (test_p2p_buf.TestP2PBufSelf.testPersistent) (s=1, typecode='b')
    ----------------------------------------------------------------------
    Traceback (most recent call last):
      File "/x/test/test_p2p_buf.py", line 9, in testPersistent
    AttributeError: module 'driller.MPI' has no attribute 'BSEND_OVERHEAD'

    ======================================================================
    FAIL: testPersistent (test_p2p_buf.TestP2PBufSelf.testPersistent) [x] (s=2)
    ----------------------------------------------------------------------
    Traceback (most recent call last):
      File "/x/test/test_p2p_buf.py", line 12, in testPersistent
    AssertionError: <Request NULL> == <Request NULL>

    ======================================================================
    ERROR: setUpClass (test_win.TestWinCreate)
    ----------------------------------------------------------------------
    Traceback (most recent call last):
      File "/x/test/test_win.py", line 12, in setUpClass
    AttributeError: module 'driller.MPI' has no attribute 'Win'

    ----------------------------------------------------------------------
    Ran 3 tests in 0.010s

    FAILED (failures=1, errors=3)
    """)


def test_parse_subtests_and_class_fixtures():
    r = conformance.parse_log(SUBTESTS)
    assert [t for _, t, _ in r.problems] == ["test_p2p_buf.TestP2PBufSelf.testPersistent"] * 3 \
        + ["test_win.TestWinCreate.setUpClass"]
    events = ("start test_p2p_buf.TestP2PBufSelf.testPersistent\n"
              "subfail test_p2p_buf.TestP2PBufSelf.testPersistent\n" * 3
              + "start test_p2p_buf.TestP2PBufSelf.testOther\n"
              "ok test_p2p_buf.TestP2PBufSelf.testOther\n")
    r = conformance.apply_events(r, events)
    assert (r.run, r.passed, r.failed, r.errors) == (3, 1, 1, 3)
    assert r.modules == {"test_p2p_buf": {"fail": 1, "ok": 1}, "test_win": {"error": 1}}
    s = conformance.combine(1, [r], 1.0, 0, [], False)
    # a reason counts the tests it fails, not each of their subtests
    assert sorted(s.top_reasons) == [("AssertionError: <Request NULL> == <Request NULL>", 1),
                                     ("missing MPI.BSEND_OVERHEAD", 1), ("missing MPI.Win", 1)]


def test_parse_ok_summary_and_old_python_ids():
    text = ("======================================================================\n"
            "FAIL: testX (test_op.TestOp)\n"
            "----------------------------------------------------------------------\n"
            "Traceback (most recent call last):\n"
            "  File \"/x/test_op.py\", line 1, in testX\n"
            "AssertionError: boom\n\n"
            "----------------------------------------------------------------------\n"
            "Ran 1 test in 0.001s\n\nFAILED (failures=1)\n")
    r = conformance.parse_log(text)
    assert (r.run, r.passed, r.failed) == (1, 0, 1)
    assert r.problems[0][1] == "test_op.TestOp.testX"       # Python 3.10's "(module.Class)"
    r = conformance.parse_log("\n----------------------------------------------------------"
                              "------------\nRan 12 tests in 0.5s\n\nOK (skipped=2)\n")
    assert (r.run, r.passed, r.skipped, r.failed, r.errors) == (12, 10, 2, 0, 0)
    assert conformance.parse_log("Ran 3 tests in 0.1s\n\nOK\n").passed == 3


def test_reason_groups_missing_names():
    r = conformance.reason
    assert r("ImportError: cannot import name 'ROOT' from 'driller.MPI' (/x/MPI.py)") \
        == "missing MPI.ROOT"
    assert r("ModuleNotFoundError: No module named 'mpi4py.util'") == "missing module mpi4py.util"
    assert r("AttributeError: 'Intracomm' object has no attribute 'Create_cart'") \
        == "missing Intracomm.Create_cart"
    assert r("AttributeError: module 'driller.MPI' has no attribute 'Win'") == "missing MPI.Win"
    assert r("ValueError: 12 at 0xdeadbeef") == "ValueError: N at 0x…"


def test_events_give_modules_running_test_and_counts_without_summary():
    # a rank stopped in the middle of a test: no unittest summary in its log
    events = textwrap.dedent("""\
        start test_comm.TestA.test1
        ok test_comm.TestA.test1
        start test_comm.TestA.test2
        subfail test_comm.TestA.test2
        fail test_comm.TestA.test2
        start test_group.TestG.test1
        skip test_group.TestG.test1
        start test_group.TestG.test2
        error test_group.TestG.test2\tAttributeError: module 'driller.MPI' has no attribute 'Win'
        start test_win.TestW.testFence
        """)
    r = conformance.apply_events(conformance.parse_log("partial output\n"), events)
    assert not r.summary
    assert r.running == "test_win.TestW.testFence"
    assert (r.run, r.passed, r.failed, r.errors, r.skipped) == (5, 1, 1, 1, 1)
    assert r.modules == {"test_comm": {"ok": 1, "fail": 1}, "test_group": {"skip": 1, "error": 1},
                         "test_win": {"unfinished": 1}}
    # no unittest report: the failures the events carry are the problems
    assert r.problems == [("ERROR", "test_group.TestG.test2",
                           "AttributeError: module 'driller.MPI' has no attribute 'Win'")]
    assert r.last_failure == ("test_group.TestG.test2: AttributeError: module 'driller.MPI' "
                              "has no attribute 'Win'")
    # with a summary, its counts stay; passes come from the events (exact with subtests)
    r = conformance.apply_events(conformance.parse_log(CAPTURED_Q), events)
    assert (r.run, r.failed, r.errors) == (41, 1, 3) and r.passed == 1


def _sizes(results):
    return {s.n: s for s in results}


def test_combine_and_verdicts():
    a = conformance.parse_log("Ran 10 tests in 1s\n\nFAILED (errors=2, skipped=1)\n", 0)
    b = conformance.parse_log("Ran 10 tests in 1s\n\nOK (skipped=1)\n", 1)
    s = conformance.combine(2, [a, b], 3.0, 0, [], False)
    assert (s.status, s.run, s.passed, s.errors, s.skipped) == ("ok", 20, 16, 2, 2)
    assert s.reference == 2 * 1633 and s.target == 3103
    s.baseline = 16
    assert conformance.verdict(s)[0]
    s.baseline = 17
    ok, why = conformance.verdict(s)
    assert not ok and "16 passed < baseline 17" in why
    text = "\n".join(conformance.format_size(s))
    assert "run 20, passed 16" in text and "3087 more passes needed" in text
    # a rank that never printed its summary while the launcher failed: a crash
    c = conformance.combine(2, [a, conformance.parse_log("", 1)], 3.0, 137,
                            ["driller run: rank 1 (pid 9) was killed by signal SIGKILL"], False)
    assert c.status == "crash" and "rank 1 (pid 9) was killed" in c.detail
    assert not conformance.verdict(c)[0]


# ---------------------------------------------------------------- whole runs, real ranks

FAKE_MAIN = textwrap.dedent("""\
    # a stand-in for mpi4py's test/main.py: same arguments, a few tests per rank
    import os, sys, time, unittest
    from mpi4py import MPI
    assert sys.argv[1:4] == ["--no-builddir", "-q", "-i"], sys.argv
    rank = MPI.COMM_WORLD.Get_rank()
    MODE = os.environ["FAKE_MODE"]

    class TestFake(unittest.TestCase):
        def test_ok(self):
            self.assertEqual(MPI.COMM_WORLD.allreduce(1), MPI.COMM_WORLD.Get_size())
        def test_fail_on_rank1(self):
            self.assertNotEqual(rank, 1)
        @unittest.skip("not here")
        def test_skip(self):
            pass
        def test_zz_trouble(self):
            if MODE == "hang" and rank == 1:
                time.sleep(3600)
            if MODE == "crash" and rank == 1:
                os.kill(os.getpid(), 9)
            MPI.COMM_WORLD.Barrier()

    suite = unittest.defaultTestLoader.loadTestsFromTestCase(TestFake)
    # a test module that fails at import, as most of mpi4py's do on a missing name
    suite.addTests(unittest.defaultTestLoader.loadTestsFromName("test_nonexistent_xyz"))
    result = unittest.TextTestRunner(verbosity=0).run(suite)
    sys.exit(not result.wasSuccessful())
    """)


@pytest.fixture
def fake_suite(tmp_path):
    (tmp_path / "suite" / "test").mkdir(parents=True)
    (tmp_path / "suite" / "test" / "main.py").write_text(FAKE_MAIN)
    return str(tmp_path / "suite")


def _run(fake_suite, tmp_path, monkeypatch, mode, timeout=60.0, n=2, stall=120.0):
    monkeypatch.setenv("FAKE_MODE", mode)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (os.path.join(ROOT, "src"), os.environ.get("PYTHONPATH")) if p))
    return conformance.run_size(n, fake_suite, timeout, outdir=str(tmp_path / f"out-{mode}"),
                                stall=stall)


def _unittest_counts_skips() -> bool:
    import io
    import unittest

    class T(unittest.TestCase):
        @unittest.skip("x")
        def test_skip(self):
            pass
    result = unittest.TextTestRunner(stream=io.StringIO(), verbosity=0).run(
        unittest.defaultTestLoader.loadTestsFromTestCase(T))
    return result.testsRun == 1


def test_run_sums_ranks_and_survives_a_failing_rank(fake_suite, tmp_path, monkeypatch):
    s = _run(fake_suite, tmp_path, monkeypatch, "ok")
    # rank 1's main.py exits 1 (a failed test); rank 0 must still report in full
    assert s.status == "ok", s.detail
    # "run" is unittest's own "Ran N", which some versions (3.12.1 here) give
    # without the skipped tests: ask this interpreter's unittest
    run = 10 if _unittest_counts_skips() else 8
    assert (s.run, s.passed, s.failed, s.errors, s.skipped) == (run, 5, 1, 2, 2)
    assert [r["exit_code"] for r in s.ranks] == [1, 1]
    assert s.modules == {"__main__": {"ok": 5, "fail": 1, "skip": 2},
                         "test_nonexistent_xyz": {"error": 2}}
    assert sorted(s.top_reasons) == [("AssertionError: N == N", 1),
                                     ("missing module test_nonexistent_xyz", 2)]


@pytest.mark.parametrize("timeout, stall, why", [
    (8.0, 120.0, "no result after the time limit (8 s): "),
    (120.0, 4.0, "no test event on any rank for 4 s: ")])
def test_run_stops_and_locates_a_hang(fake_suite, tmp_path, monkeypatch, timeout, stall, why):
    s = _run(fake_suite, tmp_path, monkeypatch, "hang", timeout=timeout, stall=stall)
    assert s.status == "hang"
    assert s.detail.startswith(why), s.detail
    # where each rank was, and why rank 1 left the tests before (from the events)
    assert "rank 0 in __main__.TestFake.test_zz_trouble; " in s.detail
    assert ("rank 1 in __main__.TestFake.test_zz_trouble (its last failure: "
            "__main__.TestFake.test_fail_on_rank1: AssertionError: 1 == 1)") in s.detail
    assert s.top_reasons == [("AssertionError: N == N", 1)]      # from the events
    assert not conformance.verdict(s)[0]
    # the ranks' stacks were dumped (SIGUSR1 through the launcher) into their logs
    log = (tmp_path / "out-hang" / "rank1.log").read_text()
    assert "most recent call first" in log and "in test_zz_trouble" in log
    assert s.wall_s < 60


def test_run_reports_a_crash(fake_suite, tmp_path, monkeypatch):
    s = _run(fake_suite, tmp_path, monkeypatch, "crash")
    assert s.status == "crash"
    assert "rank 1" in s.detail and "SIGKILL" in s.detail
    assert "rank 1 in __main__.TestFake.test_zz_trouble" in s.detail
    assert not conformance.verdict(s)[0]


def test_main_ratchet_and_update(fake_suite, tmp_path, monkeypatch):
    monkeypatch.setattr(conformance, "fetch_suite", lambda: fake_suite)
    monkeypatch.setattr(conformance, "CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FAKE_MODE", "ok")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (os.path.join(ROOT, "src"), os.environ.get("PYTHONPATH")) if p))
    base, out = tmp_path / "baseline.json", tmp_path / "results.json"
    args = ["--sizes", "1,2", "--baseline", str(base), "--json", str(out)]
    assert conformance.main([*args, "--update-baseline"]) == 0
    assert json.loads(base.read_text())["passed"] == {"1": 3, "2": 5}
    assert conformance.main(args) == 0
    res = json.loads(out.read_text())
    assert res["ok"] and res["sizes"]["2"]["passed"] == 5 and res["sizes"]["2"]["baseline"] == 5
    base.write_text(json.dumps({"passed": {"1": 3, "2": 6}}))      # one more than measured
    assert conformance.main(args) == 1
    assert not json.loads(out.read_text())["ok"]


def test_update_refused_after_a_hang(tmp_path, monkeypatch):
    monkeypatch.setattr(conformance, "fetch_suite", lambda: str(tmp_path))

    def fake_run_size(n, suite, timeout, regex, stall):
        return conformance.SizeResult(n=n, status="hang" if n == 2 else "ok", passed=7,
                                      detail="no test event on any rank for 120 s: rank 1 in x")
    monkeypatch.setattr(conformance, "run_size", fake_run_size)
    base, out = tmp_path / "baseline.json", tmp_path / "results.json"
    base.write_text(json.dumps({"passed": {"1": 3, "2": 4}}))
    args = ["--sizes", "1,2", "--baseline", str(base), "--json", str(out)]
    assert conformance.main([*args, "--update-baseline"]) == 1
    assert json.loads(base.read_text()) == {"passed": {"1": 3, "2": 4}}     # untouched
    assert conformance.main(args) == 1                    # a hang fails even above baseline
    res = json.loads(out.read_text())
    assert res["sizes"]["2"]["status"] == "hang" and not res["ok"]
    assert conformance.main(["--sizes", "1", "--baseline", str(base), "--json", str(out)]) == 0


def test_module_subset_is_checked_and_never_touches_the_baseline(tmp_path, capsys):
    """--modules runs a named part of the set: unknown names are usage errors, and a
    partial run can neither fail the ratchet nor rewrite the baseline."""
    with pytest.raises(SystemExit) as e:
        conformance.main(["--modules", "win,nosuchmodule"])
    assert e.value.code == 2
    assert "nosuchmodule not in the conformance set" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        conformance.main(["--modules", "win", "--update-baseline"])
    assert e.value.code == 2
    assert "--update-baseline needs the whole set" in capsys.readouterr().err
