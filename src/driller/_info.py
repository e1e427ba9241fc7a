"""`driller info`: this system (kernel, machine, each kernel feature driller uses, probed
for real), the fd proxy in use, its published segments, this process's cache."""

from __future__ import annotations

import argparse
import json
import os

from .errors import ProxyError

__all__ = ["main", "find_proxies", "info", "system"]


def find_proxies() -> list[str]:
    """DRILLER_PROXY-style strings ('address|secret hex') of this user's running proxies."""
    from .proxy._wire import _BOOT_VAR
    found = []
    uid = os.getuid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        for var in env:
            if var.startswith(_BOOT_VAR.encode() + b"="):
                _fd, secret, name, *_ = var.split(b"=", 1)[1].decode().split("|")
                found.append(f"\0{name}|{secret}")
    return found


def info(proxy: str | None = None) -> dict:
    """What `driller info` prints, as a dict: proxies with their segments, and our cache."""
    from .proxy import ENV_VAR, proxy_info
    from .proxy import _client
    from .proxy._wire import _show
    from .sharedarray import cache_info
    own = _client._own_proxy     # this process's proxy (kept in memory, not os.environ)
    if proxy:
        targets = [proxy]
    elif own is not None:
        targets = [f"{_show(own[0])}|{own[1].hex()}"]
    elif os.environ.get(ENV_VAR):
        targets = [os.environ[ENV_VAR]]
    else:
        targets = find_proxies()
    proxies = []
    for t in targets:
        try:
            proxies.append(proxy_info(t))
        except ProxyError as e:
            proxies.append({"address": t.split("|")[0], "error": str(e)})
    return {"system": system(), "proxies": proxies, "cache": cache_info(), "pid": os.getpid()}


def system() -> dict:
    """This machine as driller sees it: kernel, machine, Python, and each kernel
    feature driller uses, probed for real (name, since, used for, available, detail)."""
    import platform
    from . import _linux
    u = os.uname()
    features = [{"name": name, "since": "Linux %d.%d" % since, "used_for": use,
                 "available": ok, "detail": detail}
                for name, since, use, ok, detail in _linux.probe_features()]
    return {"kernel": u.release, "machine": u.machine,
            "python": platform.python_version(), "features": features}


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="driller info", description=__doc__)
    ap.add_argument("--proxy", help="'<address>|<secret hex>' as in a job's DRILLER_PROXY "
                    "(default: $DRILLER_PROXY, else every proxy of this user)")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    args = ap.parse_args(argv)
    data = info(args.proxy)
    if args.json:
        print(json.dumps(data, indent=2, default=repr))
        return 0
    sysinfo = data["system"]
    print(f"system: Linux {sysinfo['kernel']} on {sysinfo['machine']}, "
          f"Python {sysinfo['python']}")
    print("kernel features:")
    for f in sysinfo["features"]:
        state = "yes" if f["available"] else "MISSING"
        note = f"  ({f['detail']})" if f["detail"] else ""
        print(f"  {state:7s}  {f['name']:44s}  {f['since']:10s}  {f['used_for']}{note}")
    if not data["proxies"]:
        print("no driller fd proxy is running for this user")
    for p in data["proxies"]:
        addr = p.get("address", "?").replace("\0", "@")
        if "error" in p:
            print(f"proxy {addr}: {p['error']}")
            continue
        segs = p.get("segments", [])
        print(f"proxy {addr}  pid {p.get('pid')}  clients {len(p.get('clients', []))}  "
              f"segments {len(segs)}")
        leases = p.get("leases")
        if leases:
            print(f"  transfer leases {leases['live']} ({leases['orphaned']} never loaded, "
                  f"nobody holding), segments kept only for them {leases['segments_kept']}")
        if segs:
            print(f"  {'owner':>8}  {'size':>10}  {'subscribers':<20}  key")
            for s in segs:
                subs = ",".join(str(x) for x in s.get("subscribers", [])) or "-"
                print(f"  {s.get('owner', '?'):>8}  {_size(s.get('nbytes', 0)):>10}  "
                      f"{subs:<20}  {s.get('key')}")
    c = data["cache"]
    print(f"map cache of pid {data['pid']}: " + ", ".join(f"{k} {v}" for k, v in c.items()))
    return 0
