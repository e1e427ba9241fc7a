"""Where does CPython run a pending signal handler after a call returns?

    python tools/eval_breaker_probe.py            # every case, each in its own process
    python tools/eval_breaker_probe.py CASE 0|1   # one case (1: under sys.settrace)

The callee makes SIGUSR1 pending (``_thread.interrupt_main`` reached through a
subscript slot: no CALL opcode, so no eval-breaker check of its own), marks
``took`` and returns.  WINDOW: the handler's exception is raised in the caller at
the line of the call, after the callee returned and before ``t += ...`` stored.
Measured here (docs/mmpi.md, "after a call returned"): 3.10 every case but the
property and the generator; 3.11 partial, star, callobj; 3.12 and 3.13 partial,
callobj; the same under settrace."""
import functools, signal, sys, _thread

class Trig:
    __getitem__ = staticmethod(_thread.interrupt_main)
trig = Trig()

class Boom(Exception):
    pass

def handler(s, fr):
    raise Boom

took = [0]

def f(x=0):
    trig[signal.SIGUSR1]
    took[0] = 1
    return 1

class O:
    def m(self):
        trig[signal.SIGUSR1]
        took[0] = 1
        return 1
    def __call__(self):
        trig[signal.SIGUSR1]
        took[0] = 1
        return 1
    @property
    def p(self):
        trig[signal.SIGUSR1]
        took[0] = 1
        return 1
    def g(self):
        trig[signal.SIGUSR1]
        took[0] = 1
        yield 1

o = O()
part = functools.partial(f, 0)
args = ()
bm = o.m

def one(name):
    t = 0
    if name == "plain":
        t += f()
    elif name == "method":
        t += o.m()
    elif name == "boundvar":
        t += bm()
    elif name == "partial":
        t += part()
    elif name == "star":
        t += f(*args)
    elif name == "callobj":
        t += o()
    elif name == "property":
        t += o.p
    elif name == "genfor":
        for v in o.g():
            t += v
            break
    elif name == "kw":
        t += f(x=0)
    u = 0   # (the line after the calls: a handler run here is not in the window)
    return t

def main(name, trace):
    if trace:
        sys.settrace(lambda *a: None)
    signal.signal(signal.SIGUSR1, handler)
    where = "never"
    t = None
    try:
        t = one(name)
        len("x")
        len("y")
        where = "never"
    except Boom as e:
        tb = e.__traceback__
        fr = []
        while tb:
            fr.append((tb.tb_frame.f_code.co_name, tb.tb_lineno))
            tb = tb.tb_next
        where = fr[-2]
    sys.settrace(None)
    after = one.__code__.co_firstlineno + 22   # (the "u = 0" line)
    win = "WINDOW" if (took[0] == 1 and where[0] == "one" and where[1] != after) else ""
    print(f"{sys.version_info[:2]} trace={trace} {name:9} took={took[0]} t={t} raised at {where} {win}")

CASES = ("plain", "method", "boundvar", "partial", "star", "callobj", "property", "genfor",
         "kw")

if len(sys.argv) > 2:
    main(sys.argv[1], sys.argv[2] == "1")
else:
    import subprocess
    for trace in "01":
        for case in CASES:
            subprocess.run([sys.executable, __file__, case, trace], check=False)
