"""`driller info` shows a live job's proxy and segments; the proxy leaves with its job."""

import json
import os
import subprocess
import sys
import time

import pytest

OWNER = r"""
import os, sys, driller
a = driller.zeros(1 << 20)
h = driller.handle(a)
from driller.proxy import ProxyClient
from driller.proxy._wire import _show
c = ProxyClient.get()       # (the address and secret are in memory, not in os.environ)
assert "DRILLER_PROXY" not in os.environ
print(f"{_show(c.address)}|{c.secret.hex()}".encode().hex(), h.key, flush=True)
sys.stdin.readline()
"""


def _proxy_pids(address: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if address[1:].encode() in f.read():
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def test_info_lists_segments_and_the_proxy_exits_with_its_job():
    env = dict(os.environ)
    env.pop("DRILLER_PROXY", None)  # a job of its own
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, env=env, text=True)
    try:
        proxy_hex, key = owner.stdout.readline().split()
        proxy = bytes.fromhex(proxy_hex).decode()
        out = subprocess.run([sys.executable, "-m", "driller", "info", "--json",
                              "--proxy", proxy], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        segs = data["proxies"][0]["segments"]
        assert [s["key"] for s in segs] == [key]
        assert segs[0]["owner"] == owner.pid
        text = subprocess.run([sys.executable, "-m", "driller", "info", "--proxy", proxy],
                              capture_output=True, text=True, timeout=60).stdout
        assert key in text and str(owner.pid) in text
        pids = _proxy_pids(proxy.split("|")[0])
        assert pids, "the proxy process was not found"
    finally:
        owner.stdin.write("\n")
        owner.stdin.close()
        owner.wait(30)
        owner.stdout.close()
    deadline = time.monotonic() + 15
    while _proxy_pids(proxy.split("|")[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _proxy_pids(proxy.split("|")[0]), "the proxy outlived its last client"


def test_info_with_a_bad_proxy_says_so():
    out = subprocess.run([sys.executable, "-m", "driller", "info", "--proxy",
                          "@driller-nonexistent|00"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0
    assert "driller-nonexistent" in out.stdout
