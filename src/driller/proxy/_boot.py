"""Starting an fd proxy: bind and listen here, then serve in a detached process."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys

from .._env import read
from ..errors import ProxyError
from ._wire import (_BOOT_VAR, _LEASE_IDLE_VAR, _LEASE_ORPHANS_VAR, _LEASE_SECONDS_VAR,
                    _LOG_VAR, _SOCK_TYPE, _START_IDLE, ENV_VAR, _show)


def _not_negative(v: str) -> float:
    f = float(v)
    if not f >= 0:   # (negative, nan)
        raise ValueError(v)
    return f


def _whole_or_inf(v: str) -> float:
    f = _not_negative(v)
    if f != float("inf") and not f.is_integer():
        raise ValueError(v)
    return f


_SETTINGS = ((_LEASE_SECONDS_VAR, _not_negative, "a number of seconds, 0 or more (inf: no limit)"),
             (_LEASE_ORPHANS_VAR, _whole_or_inf, "a whole number, 0 or more (inf: no cap)"),
             (_LEASE_IDLE_VAR, _not_negative, "a number of seconds, 0 or more"))


def _check_settings() -> None:
    """The proxy reads its settings where it cannot raise to anyone (a bad value
    gives the default there): refuse a bad one here, before starting it."""
    for name, kind, what in _SETTINGS:
        read(name, None, kind, what, ProxyError)


# The proxy imports only driller._linux, driller.errors and driller.proxy._wire (stub
# package objects stand in for driller/__init__.py and driller/proxy/__init__.py): no
# numpy, no threads, nothing else to break.  "driller.proxy._server" in this command
# line is how tests/conftest.py recognises a proxy process.
_BOOT = ("import os,sys,types\n"
         "if os.fork(): os._exit(0)\n"
         "d = os.environ['_DRILLER_PROXY_BOOT'].split('|')[4]\n"
         "pkg = types.ModuleType('driller'); pkg.__path__ = [d]\n"
         "sub = types.ModuleType('driller.proxy'); sub.__path__ = [os.path.join(d, 'proxy')]\n"
         "pkg.proxy = sub\n"
         "sys.modules['driller'] = pkg; sys.modules['driller.proxy'] = sub\n"
         "from driller.proxy._server import _main\n"
         "_main()\n")


def _start_proxy() -> tuple[str, bytes]:
    """Bind and listen here (so the proxy is ready when we return), serve elsewhere."""
    _check_settings()
    secret = secrets.token_bytes(16)
    lsock = socket.socket(socket.AF_UNIX, _SOCK_TYPE)
    try:
        for _ in range(20):
            address = f"\0driller-{os.getpid()}-{secrets.token_hex(6)}"
            try:
                lsock.bind(address)
                break
            except OSError:
                continue
        else:  # pragma: no cover
            raise ProxyError("cannot bind an abstract unix socket for the fd proxy")
        lsock.listen(128)
        env = dict(os.environ)
        env.pop(ENV_VAR, None)
        pkgdir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # driller/
        env[_BOOT_VAR] = (f"{lsock.fileno()}|{secret.hex()}|{address[1:]}|{_START_IDLE}|"
                          f"{pkgdir}")
        log = env.get(_LOG_VAR)
        err = open(log, "ab") if log else subprocess.DEVNULL
        try:
            p = subprocess.Popen([sys.executable, "-c", _BOOT], pass_fds=[lsock.fileno()],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=err, start_new_session=True, cwd="/", env=env)
        finally:
            if log:
                err.close()
        rc = p.wait()  # the intermediate process exits right after forking the proxy
        from .._log import get_logger
        get_logger(__name__).debug("started an fd proxy at %s (status %d)%s", _show(address), rc,
                                   f", its stderr in {log}" if log else "")
        if rc != 0:
            raise ProxyError(f"the driller fd proxy failed to start (status {rc}); set "
                             f"{_LOG_VAR}=/some/file to see its error output")
    finally:
        lsock.close()  # the proxy holds the listening socket now
    return address, secret
