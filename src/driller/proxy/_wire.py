"""The fd proxy's wire format: packets, constants and small helpers shared by both ends.

Every packet is one flag byte (0 = last part, 1 = more parts follow) and a piece
of a pickled tuple; fds travel as SCM_RIGHTS on a message's first packet.
Imported by the proxy process itself: keep it to the standard library,
``driller._linux`` and ``driller.errors``.
"""

from __future__ import annotations

import array
import bisect
import os
import pickle
import select
import socket

from ..errors import ProxyError

ENV_VAR = "DRILLER_PROXY"
_BOOT_VAR = "_DRILLER_PROXY_BOOT"
_LOG_VAR = "DRILLER_PROXY_LOG"
# the proxy's lease settings (read in the proxy; checked by the client that starts it)
_LEASE_SECONDS_VAR = "DRILLER_LEASE_SECONDS"
_LEASE_ORPHANS_VAR = "DRILLER_LEASE_MAX_ORPHANS"
_LEASE_IDLE_VAR = "DRILLER_LEASE_IDLE_SECONDS"
_MAGIC = b"DRLRPX1:"
_MAX_PACKET = 1 << 16            # one SEQPACKET message, flag byte included
_CHUNK = _MAX_PACKET - 1
_MORE, _LAST = b"\x01", b"\x00"
_ANC = socket.CMSG_SPACE(4 * 8)  # room for a few fds; extra ones are closed by the kernel
_SOCK_TYPE = socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC
_START_IDLE = 5.0                # seconds a new proxy waits for its first client
_AUTH_TIMEOUT = 10.0             # seconds a connection may stay unauthenticated
_HELLO_TIMEOUT = 30.0            # seconds a client waits for the proxy's greeting
_GONE_MEMORY = 4096              # released keys remembered for error messages
_PROTO = pickle.HIGHEST_PROTOCOL
_EPOLL_IN = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR
# plain ints: the enum versions cost microseconds per | on the hot path
_CLOEXEC = int(socket.MSG_CMSG_CLOEXEC)
_DONTWAIT = int(socket.MSG_DONTWAIT)
_NOSIGNAL_DONTWAIT = int(socket.MSG_DONTWAIT) | int(socket.MSG_NOSIGNAL)
_TRUNC = int(socket.MSG_TRUNC)
_CTRUNC = int(socket.MSG_CTRUNC)
_SOL_SOCKET = int(socket.SOL_SOCKET)
_SCM_RIGHTS = int(socket.SCM_RIGHTS)


def _packets(obj) -> list[bytes]:
    data = pickle.dumps(obj, _PROTO)
    if len(data) <= _CHUNK:
        return [_LAST + data]
    out = [_MORE + data[i:i + _CHUNK] for i in range(0, len(data), _CHUNK)]
    out[-1] = _LAST + out[-1][1:]
    return out


def _fds_of(ancdata) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == _SOL_SOCKET and kind == _SCM_RIGHTS:
            a = array.array("i")
            a.frombytes(data[:len(data) - len(data) % a.itemsize])
            fds.extend(a)
    return fds


def _close_all(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class _Message:
    """One message's packets as they come (each led by _MORE, the last by _LAST), and
    the fds that came with them: both sides of the socket read messages so."""
    __slots__ = ("parts", "fds", "size")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.fds: list[int] = []
        self.size = 0                      # bytes of the message so far

    def add(self, packet: bytes, fds: list[int]) -> bool:
        """Take one packet and its fds; True when it was the message's last."""
        self.fds.extend(fds)
        self.size += len(packet) - 1
        self.parts.append(packet[1:])
        return packet[:1] != _MORE

    def take(self) -> tuple[bytes, list[int]]:
        """The whole message and its fds (now the caller's); the next one starts."""
        parts, fds = self.parts, self.fds
        self.parts, self.fds, self.size = [], [], 0
        return (parts[0] if len(parts) == 1 else b"".join(parts)), fds

    def discard(self) -> None:
        """Drop a message begun (its fds closed)."""
        _close_all(self.fds)
        self.parts, self.fds, self.size = [], [], 0


RANGES_KEPT = 16   # (lo, hi) runs of loaded handle numbers one lease's report holds
RANGES_KEPT_PROXY = 4096   # ... and the proxy keeps per lease (loads come in any order)


def add_run(runs: list, lo: int, hi: int, cap: int = RANGES_KEPT) -> bool:
    """Add handle numbers lo..hi to ``runs``: sorted, disjoint, non-adjacent
    inclusive [lo, hi] lists (numbers loaded in order stay one run, whatever
    their count).  False, and nothing added, when that would make more than
    ``cap`` runs."""
    if runs:
        last = runs[-1]
        if last[0] <= lo <= last[1] + 1:   # (the usual case: the next number)
            if hi > last[1]:
                last[1] = hi
            return True
    # runs[i:j] touch [lo, hi] (overlap or adjacent): found by bisection, so a client
    # saying thousands of scattered runs costs the proxy log(n) each, not a sort (a
    # request of 85,000 runs held the proxy, and every other client, for 67 s)
    i = bisect.bisect_left(runs, lo - 1, key=_end)
    j = bisect.bisect_right(runs, hi + 1, key=_start)
    if i == j:
        if len(runs) >= cap:
            return False
        runs.insert(i, [lo, hi])
        return True
    runs[i:j] = [[min(lo, runs[i][0]), max(hi, runs[j - 1][1])]]
    return True


def _start(run: list) -> int:
    return run[0]


def _end(run: list) -> int:
    return run[1]


def as_said(runs: list) -> tuple:
    """``runs`` as a report carries them: a tuple of (lo, hi) pairs."""
    return tuple((lo, hi) for lo, hi in runs)


def claim_said(claim: list) -> tuple:
    """What a mapping's claim of a lease ([generation, runs of the numbers loaded
    through it] and, once it forwarded views, [its range's base, how many it
    numbered]) says as it is let go of (``_server._Lease.said``)."""
    runs = as_said(claim[1])
    if len(claim) > 2:
        return (0, runs, ((claim[2][0], claim[2][1]),))
    return runs


def covers(runs: list, issued: int, first: int = 1) -> bool:
    """Whether ``runs`` (see add_run) hold every number from first to issued."""
    return issued < first or any(lo <= first and hi >= issued for lo, hi in runs)


# Handle numbers of a process that pickles a view of an array it loaded (it forwards
# it; the maker's own numbers count from 1): the proxy gives each such process a
# range of its own, FORWARDED + k * FORWARD_SPAN (its base), and the process numbers
# its pickles base + 1, base + 2... itself, saying how many it made as it lets go
FORWARDED = 1 << 40
FORWARD_SPAN = 1 << 32


def _owner_of(key: str) -> int | None:
    """The owner pid encoded in a key made by segment.new_key(), if any."""
    head = key.split("-", 1)[0]
    return int(head) if head.isdigit() else None


def _parse_env(value: str) -> tuple[str, bytes]:
    address, sep, hexsecret = value.rpartition("|")
    if not sep or not address:
        raise ProxyError(f"malformed {ENV_VAR}={value!r}: expected '<address>|<secret hex>'")
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        return address, bytes.fromhex(hexsecret)
    except ValueError:
        raise ProxyError(f"malformed secret in {ENV_VAR}: not hex") from None


def _show(address: str) -> str:
    return "@" + address[1:] if address.startswith("\0") else address

