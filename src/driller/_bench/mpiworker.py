"""The ONE message-passing worker, for both engines.

    mpirun -n N python -m driller._bench.mpiworker --engine mpi4py --ctl SOCK --group G
    python -m driller run -n N -m driller._bench.mpiworker --engine driller --ctl SOCK --group G

``--engine`` picks ``from mpi4py import MPI`` or ``from driller import mmpi``; the
kernels (:mod:`._kernels`) only use the mpi4py-like API both provide.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from . import _ctl, _kernels as K


class Engine:
    def __init__(self, name: str):
        self.name = name
        self.versions: dict = {}
        self.pkl5 = None
        self.pkl5_error = None
        if name == "mpi4py":
            import mpi4py
            from mpi4py import MPI
            self.comm = MPI.COMM_WORLD
            self.SUM = MPI.SUM
            self.BYTE = MPI.BYTE
            self.waitall = MPI.Request.Waitall
            self.versions = {
                "mpi4py": mpi4py.__version__,
                "mpi_library": MPI.Get_library_version().strip().splitlines()[0].split(",")[0],
                "mpi_standard": "%d.%d" % MPI.Get_version(),
            }
            try:
                from mpi4py.util import pkl5
                self.pkl5 = pkl5.Intracomm(self.comm)
            except Exception as e:  # older mpi4py
                self.pkl5_error = f"{type(e).__name__}: {e}"
        elif name == "driller":
            import driller
            from driller import mmpi
            from driller import MPI
            self.comm = mmpi.COMM_WORLD
            self.SUM = getattr(mmpi, "SUM", None)
            self.BYTE = MPI.BYTE
            req = getattr(mmpi, "Request", None)
            self.waitall = getattr(req, "Waitall", None)
            if self.waitall is None and req is not None and hasattr(req, "Wait"):
                self.waitall = lambda reqs: [r.Wait() for r in reqs]
            self.versions = {"driller": getattr(driller, "__version__", None) or _dist_version()}
        else:
            raise ValueError(f"unknown engine {name!r}")
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()

    def api(self, name: str):
        if name in ("buf", "obj", "spec"):
            return self.comm
        if name == "pkl5":
            if self.pkl5 is None:
                raise RuntimeError(f"mpi4py.util.pkl5 unavailable: {self.pkl5_error}")
            return self.pkl5
        raise ValueError(f"unknown api {name!r}")


def _dist_version():
    try:
        from importlib.metadata import version
        return version("driller")
    except Exception:
        return "unknown"


class Buffers:
    """Send/receive buffers per size, kept for the whole run, as OSU reuses its
    buffers: pages stay warm and an engine may cache what it learnt about them."""

    def __init__(self):
        self.bufs: dict = {}

    def get(self, size: int):
        if size not in self.bufs:
            self.bufs[size] = (np.full(size, 1, np.uint8), np.zeros(size, np.uint8))
        return self.bufs[size]


def make_handler(eng: Engine):
    bufs = Buffers()
    objs: dict = {}

    def handle(cmd: dict) -> dict:
        op = cmd["op"]
        iters, warmup = int(cmd.get("iters", 1)), int(cmd.get("warmup", 0))
        cap = cmd.get("cap")
        if op == "barrier":
            return K.barrier(eng.comm, iters, warmup, cap=cap)
        if op in ("bcast", "allreduce"):
            n = max(1, int(cmd["size"]) // 8)
            if ("coll", n) not in objs:  # float64 buffers, kept for the whole run
                objs[("coll", n)] = (np.full(n, 1.0 + eng.rank), np.zeros(n))
            s, r = objs[("coll", n)]
            if op == "bcast":
                return K.bcast(eng.comm, s if eng.rank == 0 else r, iters, warmup, cap=cap)
            return K.allreduce(eng.comm, s, r, eng.SUM, iters, warmup, cap=cap)
        if eng.rank > 1:  # point-to-point uses ranks 0 and 1 only
            return {"t": None}
        size = int(cmd["size"])
        comm = eng.api(cmd.get("api", "buf"))
        if op == "lat":
            s, r = bufs.get(size)
            if cmd["api"] == "spec":   # osu's form: [buf, count, MPI.BYTE]
                s, r = [s, size, eng.BYTE], [r, size, eng.BYTE]
            if cmd["api"] in ("buf", "spec"):
                return K.pingpong_buf(comm, eng.rank, s, r, iters, warmup, cap=cap)
            return K.pingpong_obj(comm, eng.rank, s, iters, warmup, cap=cap)
        if op == "bw":
            s, r = bufs.get(size)
            window = int(cmd.get("window") or K.bw_window(size))
            if cmd["api"] == "spec":
                s, r = [s, size, eng.BYTE], [r, size, eng.BYTE]
            if cmd["api"] in ("buf", "spec"):
                return K.bandwidth_buf(comm, eng.rank, s, r, iters, warmup, window,
                                       eng.waitall, cap=cap)
            return K.bandwidth_obj(comm, eng.rank, s, iters, warmup, window, cap=cap)
        if op == "obj":
            if size not in objs:  # kept for the whole run, like the buffers
                objs[size] = K.make_object(size)
            return K.pingpong_obj(comm, eng.rank, objs[size], iters, warmup, cap=cap)
        raise ValueError(f"unknown op {op!r}")

    return handle


def _env_rank():
    for v in ("OMPI_COMM_WORLD_RANK", "DRILLER_MMPI_RANK", "PMIX_RANK"):
        if os.environ.get(v, "").isdigit():
            return int(os.environ[v])
    comm = sys.modules.get("driller.mmpi._comm")  # importing mmpi took DRILLER_MMPI_RANK
    rank = comm.launched_rank() if comm is not None else None
    return -1 if rank is None else rank


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m driller._bench.mpiworker")
    p.add_argument("--engine", required=True, choices=["mpi4py", "driller"])
    p.add_argument("--ctl", required=True)
    p.add_argument("--group", required=True)
    a = p.parse_args(argv)
    try:
        eng = Engine(a.engine)
    except Exception as e:
        try:
            c = _ctl.connect(a.ctl, {"group": a.group, "rank": _env_rank(), "pid": os.getpid(),
                                     "error": f"{a.engine} unavailable: {type(e).__name__}: {e}"})
            c.close()
        except OSError:
            pass
        print(f"mpiworker: {a.engine} unavailable: {type(e).__name__}: {e}", file=sys.stderr)
        return 3
    conn = _ctl.connect(a.ctl, {"group": a.group, "rank": eng.rank, "size": eng.size,
                                "pid": os.getpid(), "engine": a.engine, "versions": eng.versions,
                                "nonblocking": (eng.waitall is not None
                                                and hasattr(eng.comm, "Isend"))})
    _ctl.serve_commands(conn, make_handler(eng))
    conn.close()
    return 0


if __name__ == "__main__":
    # run the importable module, not __main__, so pickled functions resolve anywhere
    from driller._bench.mpiworker import main as _main
    sys.exit(_main())
