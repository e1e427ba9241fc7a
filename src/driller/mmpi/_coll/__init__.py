"""Collective operations, reduction ops and nonblocking collectives of mmpi.

Algorithms are functions over a communicator's :class:`_context.Context`,
split by family: ``_ops`` (Op and the predefined reductions), ``_context``
(the context and the plumbing), ``_shm`` (shared-memory barrier and small
Allreduce), ``_barrier``, ``_bcast``, ``_direct`` (reading peers' buffers in
place), ``_gather``, ``_reduce``, ``_alltoall``, ``_nonblocking``, ``_vcoll``
(the other nonblocking forms and Alltoallw), ``_neighbor`` (neighbourhood
collectives over a process topology's neighbours, for ``_topo``).  ``Comm``
(``_comm``) delegates each collective method to these functions in one line.

Every collective runs on the communicator's collective context (``cx.cctx``),
so it never matches user point-to-point traffic; each call takes the next sequence number of its
communicator and tags its messages ``seq << 8 | step``, so consecutive (or
concurrent nonblocking) collectives never match each other either.  MPI
requires every rank to call the collectives of a communicator in the same
order, which keeps the sequence numbers in agreement.

Algorithms (docs/collectives.md has the measurements behind the thresholds):

* small messages go through point-to-point eager messages: flat fan-out/fan-in
  for few ranks (fewer dependent wake-ups, which dominate when ranks outnumber
  cores), binomial trees beyond ``FLAT_MAX`` ranks, recursive doubling for
  small ``Allreduce``;
* the barrier of a world-group communicator is one shared-memory word per rank
  (``_shm.shm_barrier``; ``Comm.Barrier`` calls it);
* large buffers are never relayed: a rendezvous message is copied once,
  straight from the owner's memory by the reader (process_vm_readv), so a
  large ``Bcast`` is root -> every rank directly, one copy per receiver, and a
  large ``Allgather`` reads every block from its owner;
* large reductions (``Allreduce``, ``Reduce``, ``Reduce_scatter``) exchange
  buffer addresses, then each rank reduces its own slice reading every peer's
  buffer directly, cache-sized chunk by chunk (read into an L2-resident
  scratch, numpy ufunc in place), then writes its result slice once into every
  receive buffer that needs it (process_vm_writev), and a barrier ends it.

Algorithms are generators yielding the point-to-point operations they wait on:
blocking calls drive them to the end, nonblocking ones (``Ibarrier``,
``Ibcast``, ``Iallreduce``) advance them at ``Test``/``Wait`` and in every
progress of the transport while they are in flight.
"""
