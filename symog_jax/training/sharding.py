"""Data-parallel training over every device of every host, with JAX's own machinery.

One :class:`jax.sharding.Mesh` with a single axis ``"data"`` spans all devices
(``jax.devices()``: 1 CPU, 8 GPUs, or every chip of a TPU pod slice). The batch is sharded
along that axis; the train state (parameters, optimizer state, batch-norm statistics, formats)
is replicated. The train step is one ``jax.jit`` with explicit ``in_shardings`` /
``out_shardings``, so XLA (GSPMD) inserts the gradient all-reduce itself, and every reduction
over the batch axis -- the loss mean, batch-norm means and variances -- is a reduction over the
*global* batch: the numbers are those of one device with the whole batch, up to float
summation order.

Several hosts (processes): :func:`initialize_distributed` calls
``jax.distributed.initialize()`` (TPU pods, SLURM and Open MPI are detected by JAX; elsewhere
set ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``). Every host then
runs the same program; each one reads only its own rows of each global batch
(:meth:`DataParallel.local_rows`) and :meth:`DataParallel.put_batch` assembles the global array
with ``jax.make_array_from_process_local_data``.

Example (one host; on a machine with 4 devices the batch is split 4 ways)::

    parallel = DataParallel()
    parallel.check_batch_size(128)
    state = parallel.replicate(state)
    x, y = parallel.put_batch(128, images_uint8[parallel.local_rows(128)], labels[...])
"""

from __future__ import annotations

import math
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["DATA_AXIS", "DEFAULT_DISTRIBUTED_TIMEOUT", "DataParallel", "initialize_distributed",
           "prefetch"]

#: Name of the mesh axis the batch is split along.
DATA_AXIS = "data"
#: Environment switch for :func:`initialize_distributed` (``1``/``true``/``yes``: on).
DISTRIBUTED_ENV = "SYMOG_JAX_DISTRIBUTED"
#: Seconds :func:`initialize_distributed` waits for the coordinator and the other processes.
DEFAULT_DISTRIBUTED_TIMEOUT = 300.0


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def initialize_distributed(enabled: bool = False,
                           timeout: float = DEFAULT_DISTRIBUTED_TIMEOUT) -> bool:
    """Joins the processes of a multi-host run (``jax.distributed.initialize``), once.

    Runs when ``enabled`` (``TrainConfig.distributed``, ``--distributed``) or the environment
    variable ``SYMOG_JAX_DISTRIBUTED=1`` is set; otherwise it does nothing and the run uses the
    devices of this process only. It must come before the first JAX computation of the
    process (``train`` calls it first thing). On TPU pod slices, SLURM and Open MPI, JAX finds
    the coordinator, the process count and this process's id itself; elsewhere set
    ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0), ``JAX_NUM_PROCESSES`` and
    ``JAX_PROCESS_ID`` on every host.

    Before it waits it prints one line saying what for (the coordinator's address, this
    process's id and the process count, the timeout); a coordinator that does not answer, or
    processes that do not all join, within ``timeout`` seconds end the wait with a one-line
    error naming the address and the timeout.

    Args:
      enabled: join (``--distributed``).
      timeout: seconds to wait for the coordinator and the other processes (``> 0``;
        ``--distributed-timeout``).

    Returns:
      True if this process is part of an initialized multi-process run.

    Raises:
      ValueError: ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` are not integers; ``timeout`` is
        not a finite number > 0.
      RuntimeError: the coordinator did not answer in time, or joining failed otherwise (one
        line naming the address); JAX computed something before (too late to initialize).
    """
    if jax.distributed.is_initialized():
        return True
    if not (enabled or _env_flag(DISTRIBUTED_ENV)):
        return False
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"distributed timeout must be a finite number of seconds > 0, "
                         f"got {timeout!r}")
    kwargs: dict[str, Any] = {}
    for env, key in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
        value = os.environ.get(env)
        if value is not None:
            try:
                kwargs[key] = int(value)
            except ValueError:
                raise ValueError(f"{env} must be an integer, got {value!r}") from None
    address = os.environ.get("JAX_COORDINATOR_ADDRESS") or "(detected by JAX)"
    who = (f"process {kwargs.get('process_id', '?')} of {kwargs.get('num_processes', '?')}")
    print(f"distributed: waiting up to {timeout:g} s for the coordinator {address} and the "
          f"other processes ({who})", file=sys.stderr, flush=True)
    try:
        jax.distributed.initialize(initialization_timeout=max(1, math.ceil(timeout)), **kwargs)
    except Exception as e:  # noqa: BLE001 - JAX raises XlaRuntimeError/RuntimeError/ValueError
        detail = " ".join(str(e).split())
        detail = detail if len(detail) <= 200 else detail[:200] + "..."
        timed_out = any(s in str(e).upper() for s in ("DEADLINE", "TIMED OUT", "TIMEOUT"))
        what = (f"no answer from the coordinator {address} ({who}) within {timeout:g} s "
                "(--distributed-timeout)" if timed_out else
                f"could not join the distributed run at the coordinator {address} ({who})")
        raise RuntimeError(f"{what}: {type(e).__name__}: {detail}") from None
    return True


class DataParallel:
    """A 1-D device mesh (axis ``"data"``) and the two shardings a data-parallel step uses.

    Attributes:
      mesh: ``Mesh`` over ``devices`` (default: ``jax.devices()``, all hosts' devices).
      replicated: ``NamedSharding(mesh, P())``: the train state, metrics.
      batch: ``NamedSharding(mesh, P("data"))``: images ``(B, H, W, C)`` uint8 and labels
        ``(B,)`` int32, split along the leading axis.
    """

    def __init__(self, devices: Sequence[jax.Device] | None = None):
        devices = list(jax.devices() if devices is None else devices)
        if not devices:
            raise ValueError("DataParallel needs at least one device")
        self.mesh = Mesh(np.asarray(devices, dtype=object), (DATA_AXIS,))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.batch = NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))

    @property
    def num_devices(self) -> int:
        return self.mesh.size

    @property
    def multi_process(self) -> bool:
        """Whether the mesh spans devices of other processes (hosts)."""
        return any(d.process_index != jax.process_index() for d in self.mesh.devices.flat)

    @staticmethod
    def is_primary() -> bool:
        """Whether this process writes the run's files (process 0)."""
        return jax.process_index() == 0

    def describe(self) -> str:
        """E.g. ``'4 cpu devices'`` or ``'32 tpu devices on 4 hosts'``."""
        kind = self.mesh.devices.flat[0].platform
        hosts = len({d.process_index for d in self.mesh.devices.flat})
        return (f"{self.num_devices} {kind} device{'s' if self.num_devices > 1 else ''}"
                + (f" on {hosts} hosts" if hosts > 1 else ""))

    def check_batch_size(self, batch_size: int, what: str = "batch size") -> None:
        """Raises a one-line ``ValueError`` unless ``batch_size`` splits evenly over the mesh."""
        n = self.num_devices
        if batch_size % n:
            raise ValueError(f"{what} {batch_size} is not divisible by the {n} devices the batch "
                             f"is split over; use a multiple of {n} (e.g. "
                             f"{max(n, batch_size // n * n)} or {-(-batch_size // n) * n})")

    def round_up(self, batch_size: int) -> int:
        """The smallest multiple of the device count that is >= ``batch_size``."""
        return -(-batch_size // self.num_devices) * self.num_devices

    def local_rows(self, global_batch: int) -> slice:
        """The rows of a ``(global_batch, ...)`` batch this process's devices hold.

        ``slice(0, global_batch)`` on one host; on host ``p`` of ``P`` (equal device counts)
        ``slice(p * global_batch // P, (p + 1) * global_batch // P)``.
        """
        self.check_batch_size(global_batch)
        spans = sorted({(idx[0].start or 0, global_batch if idx[0].stop is None else idx[0].stop)
                        for idx in self.batch.addressable_devices_indices_map(
                            (global_batch,)).values()})
        start, stop = spans[0][0], spans[-1][1]
        if sum(b - a for a, b in spans) != stop - start:
            raise ValueError("this process's devices do not hold one contiguous block of the "
                             "batch; order jax.devices() by process")
        return slice(start, stop)

    def put_batch(self, global_batch: int, *local: np.ndarray) -> tuple[jax.Array, ...]:
        """Global batch-sharded arrays from this process's rows (``local_rows``) of each one.

        Args:
          global_batch: rows of the global batch ``B``.
          *local: host arrays ``(B / processes, ...)``, e.g. uint8 images and int32 labels.

        Returns:
          One ``jax.Array`` of shape ``(B, ...)`` per input, sharded as :attr:`batch`.
        """
        return tuple(jax.make_array_from_process_local_data(
            self.batch, a, (global_batch,) + tuple(np.shape(a)[1:])) for a in local)

    def replicate(self, tree: Any) -> Any:
        """``tree`` with every array leaf copied to every device (:attr:`replicated`).

        On several hosts the value must be the same on each (it is: seeded initialisation, or
        a checkpoint); it is assembled from this host's copy.
        """
        if not self.multi_process:
            return jax.device_put(tree, self.replicated)

        def put(leaf):
            value = np.asarray(leaf)
            return jax.make_array_from_callback(value.shape, self.replicated,
                                                lambda index: value[index])
        return jax.tree_util.tree_map(put, tree)

    def local_copy(self, tree: Any) -> Any:
        """A replicated ``tree`` as arrays on this process's first device (for eager code such
        as ``Method.finalize`` that must not run as a multi-host computation)."""
        if not self.multi_process:
            return tree
        return jax.tree_util.tree_map(
            lambda a: a.addressable_data(0) if isinstance(a, jax.Array) else a, tree)


_DONE = object()


#: How long closing a :func:`prefetch` waits for its thread to finish the batch it is copying.
PREFETCH_JOIN_SECONDS = 30.0


def prefetch(batches: Iterable[Any], put: Callable[[Any], Any], size: int = 2) -> Iterator[Any]:
    """Yields ``put(batch)`` for each batch, computed up to ``size`` batches ahead in a thread.

    ``put`` gathers a batch and starts its host-to-device copy (e.g.
    :meth:`DataParallel.put_batch`), so the copy of batch ``i + 1`` overlaps step ``i``. Order
    is kept; an exception in the thread is raised here; closing the generator (or Ctrl-C in the
    consumer) stops the thread and waits for it to finish the batch it is copying.
    """
    if size < 1:
        raise ValueError(f"prefetch size must be >= 1, got {size}")
    ready: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def offer(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for batch in batches:
                if not offer((put(batch), None)):
                    return
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            offer((None, e))
            return
        offer((_DONE, None))

    thread = threading.Thread(target=work, name="symog-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        # Wait until the thread has left ``put`` (a host-to-device copy in native code): a
        # daemon thread still inside XLA when the interpreter exits (e.g. right after an error
        # ends the run) makes the process abort ("FATAL: exception not rethrown", rc -6).
        if thread is not threading.current_thread():
            thread.join(timeout=PREFETCH_JOIN_SECONDS)
