"""The fd proxy: a small server process that forwards segment memfds to peers.

A process that publishes a segment hands its memfd to the proxy; any process of
the same user that knows the proxy's address and secret can fetch a new fd for
that key (SCM_RIGHTS) and map it.  When the owner releases the key, or dies
(its connection reaches EOF), the proxy drops its fd and tells every process
that fetched the key (a *release notice*, sent asynchronously on the same
connection).

Transport: an abstract-namespace ``SOCK_SEQPACKET`` unix socket (nothing on
disk; message boundaries and the fd attached to each message are kept by the
kernel).  Every packet is one flag byte (0 = last part, 1 = more parts follow)
and a piece of a pickled tuple.  Pickles are only ever read from peers whose
uid is ours (SO_PEERCRED, checked on both ends) and, on the server, only after
the peer has sent the secret as raw bytes.  The uid is the boundary: the secret
keeps out a connection made by mistake, not another process of the same user,
which can read it in the proxy's ``/proc/PID/environ`` (``driller info`` does)
and open the memfds the proxy holds through ``/proc/PID/fd`` anyway.  So a
handle's secret grants every segment of its proxy; a read-only handle restricts
only the segment it names (sealed by the kernel), see the README's "Rules".

Lifetime: the first process that needs a proxy (its first publish, or reading
``ProxyClient.get().address``) starts one: ``python -c`` that forks once more,
so the proxy is nobody's child, and imports only ``_server``, ``_wire``, ``_linux``
and ``errors``.  The starting process binds and listens itself and hands the socket
over, so the proxy is reachable when the call returns.  It keeps the proxy's
address and secret in memory, never in ``os.environ`` (where every exec'd child
and every crash report would see the secret): a fork child (multiprocessing's
fork, ``mmpi.spawn``) joins the same proxy, an exec'd child starts its own on
first need (a handle carries its proxy's address and secret anyway).  A process
may be pointed at a running proxy with ``DRILLER_PROXY=@<name>|<secret hex>``
(``@`` stands for the leading NUL of the abstract address); driller reads it,
never writes it.  The
proxy exits when its last client has disconnected, or if nobody authenticates
within a few seconds of its start.

Release notices: a key released explicitly or by its owner's death (EOF on the
owner's connection) is reported to every connection that fetched it.  If a
proxy connection itself is lost, the keys fetched through it are reported as
released too (nobody can vouch for them any more).  ``released_keys()`` is
consumed by the map cache; other code should not drain it.

Bounds: the proxy serves every process of one uid, so one buggy or hostile
client must not stall or bloat it for the others.  At its open-file limit it
stops accepting for a moment (or until a client leaves), logs once and refuses
newcomers with a clear reason instead of spinning; at most 256 connections wait
to authenticate (the oldest is dropped for a new one, each for 10 s at most);
one request is at most 1 MiB and 16 fds, a client over that is disconnected and
everything it held is freed; a client that does not read its replies is not read
from while more than 1 MiB of replies wait for it.  Release notices are never
dropped.  ``proxy_info()`` reports ``connections``, ``unauthenticated``,
``buffered`` (bytes held for clients), ``accepting``, ``refused_at_limit`` and
``nofile``.  Details in ``_server``.

Modules: ``_wire`` (packet format, constants), ``_client`` (``ProxyClient``,
``proxy_info``), ``_boot`` (starting a proxy), ``_server`` (the proxy process).
"""

from ._client import ProxyClient, proxy_info
from ._wire import ENV_VAR

__all__ = ["ProxyClient", "proxy_info", "ENV_VAR"]
