"""Data-parallel SPMD: a 1-D device mesh, replicated state, batch sharded over axis ``'batch'``.

The per-device body of a step runs under ``jax.shard_map`` inside ``jax.jit`` (what ``pmap`` is
built on today). Inside the body a method computes its loss on its shard and averages gradients
with ``lax.pmean(grads, 'batch')``. ``check_vma`` is off so that gradients with respect to the
replicated parameters are per-device (the ``pmap`` convention) and the explicit ``pmean`` is the
one place they are averaged.
"""

import collections
import functools
from typing import Any, Callable, Optional

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = 'batch'


_LOOPBACK_HOSTS = ('127.0.0.1', 'localhost', '[::1]', '::1')


def _env_int(name: str, value):
  """``value`` as an int, or the environment variable ``name`` when ``value`` is None."""
  import os  # pylint: disable=g-import-not-at-top
  raw = value if value is not None else os.environ.get(name)
  if raw is None or raw == '':
    return None
  try:
    return int(raw)
  except (TypeError, ValueError):
    raise ValueError(f'{name.lower().replace("jax_", "")}={raw!r} must be an integer.') from None


def _on_cloud_tpu_vm() -> bool:
  """Whether ``import jax`` found a Cloud TPU VM (libtpu and TPU chips).

  Plain Cloud TPU VMs (``gcloud ... tpu-vm ssh --worker=all``) set no environment variable that
  names the other hosts; ``jax.distributed.initialize()`` finds them in the VM's metadata.
  """
  try:
    from jax._src import cloud_tpu_init  # pylint: disable=g-import-not-at-top
  except ImportError:  # moved in a later JAX: fall back to TPU_WORKER_HOSTNAMES alone
    return False
  return bool(getattr(cloud_tpu_init, 'running_in_cloud_tpu_vm', False))


def distributed_kwargs(coordinator_address=None, num_processes=None, process_id=None,
                       local_device_ids=None) -> Optional[dict]:
  """The ``jax.distributed.initialize`` arguments for this process; None for a single process.

  Flags win over the standard environment variables ``JAX_COORDINATOR_ADDRESS``,
  ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``. On a Cloud TPU VM (one host or a pod slice;
  on GKE ``TPU_WORKER_HOSTNAMES`` lists the hosts) JAX finds everything itself: the result is
  ``{}``, and orbax's multi-host checkpointing has the distributed client it needs. A
  coordinator on a loopback address binds to that address only (JAX's default binds every
  interface).

  Raises:
    ValueError: inconsistent values (a process id outside ``[0, num_processes)``, no
      coordinator address for several processes, non-integers).
  """
  import os  # pylint: disable=g-import-not-at-top
  num_processes = _env_int('JAX_NUM_PROCESSES', num_processes)
  process_id = _env_int('JAX_PROCESS_ID', process_id)
  address = coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS') or None
  on_tpu_pod = bool(os.environ.get('TPU_WORKER_HOSTNAMES', '').count(',')) or _on_cloud_tpu_vm()
  if num_processes is not None and num_processes < 1:
    raise ValueError(f'num_processes={num_processes} must be >= 1.')
  if not ((num_processes or 1) > 1 or on_tpu_pod):
    return None
  kwargs = {}
  if num_processes is not None:
    if address is None:
      raise ValueError(f'num_processes={num_processes} needs --coordinator_address=host:port '
                       '(or JAX_COORDINATOR_ADDRESS): the address of process 0.')
    if process_id is None or not 0 <= process_id < num_processes:
      raise ValueError(f'process_id={process_id} must be in [0, {num_processes}) for '
                       f'num_processes={num_processes} (--process_id or JAX_PROCESS_ID).')
    kwargs.update(num_processes=num_processes, process_id=process_id)
  if address is not None:
    if ':' not in address:
      raise ValueError(f'coordinator_address={address!r} must be host:port.')
    kwargs['coordinator_address'] = address
    host = address.rsplit(':', 1)[0]
    if host in _LOOPBACK_HOSTS and not os.environ.get('JAX_COORDINATOR_BIND_ADDRESS'):
      kwargs['coordinator_bind_address'] = address
  elif process_id is not None:
    kwargs['process_id'] = process_id
  if local_device_ids is not None:
    kwargs['local_device_ids'] = local_device_ids
  return kwargs


def maybe_initialize_distributed(coordinator_address=None, num_processes=None, process_id=None,
                                 local_device_ids=None) -> None:
  """Calls ``jax.distributed.initialize`` when this run is one of several processes.

  Must run before anything touches a JAX backend. Arguments left None are read from the
  standard environment (see :func:`distributed_kwargs`). On CPU, cross-process collectives
  need an implementation: gloo (TCP) is selected unless one is already configured.
  """
  kwargs = distributed_kwargs(coordinator_address, num_processes, process_id, local_device_ids)
  if kwargs is None:
    return
  if jax.config.values.get('jax_cpu_collectives_implementation', 'gloo') in (None, '', 'none'):
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(**kwargs)


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh over every device (of every process), axis ``'batch'``."""
  devices = jax.devices() if devices is None else devices
  return jax.sharding.Mesh(np.asarray(devices), (AXIS,))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXIS))


def check_batch_size(global_batch_size: int, mesh, what: str = 'batch_size') -> int:
  """Returns the per-device batch size; ValueError if it does not divide evenly."""
  n = mesh.devices.size
  if global_batch_size <= 0 or global_batch_size % n:
    raise ValueError(f'{what}={global_batch_size} must be a positive multiple of the number of '
                     f'devices ({n}): try {max(n, global_batch_size // n * n)}.')
  if global_batch_size % jax.process_count():
    raise ValueError(f'{what}={global_batch_size} must be a multiple of the number of processes '
                     f'({jax.process_count()}): each process feeds an equal part of every batch.')
  return global_batch_size // n


def eval_batch_size(global_batch_size: int, mesh) -> int:
  """The eval batch: ``global_batch_size`` rounded up to a multiple of the devices and processes.

  Evaluation masks padded examples, so an eval batch need not divide evenly: 500 on 8 devices
  runs as 504, the extra rows padding. (Training batches must divide; see
  :func:`check_batch_size`.)
  """
  if global_batch_size <= 0:
    raise ValueError(f'eval_batch_size={global_batch_size}: allowed an integer > 0.')
  n = np.lcm(mesh.devices.size, jax.process_count())
  return int(-(-global_batch_size // n) * n)


def replicate(tree, mesh):
  """Places a host pytree on every device of the mesh (fully replicated global arrays)."""
  sharding = replicated(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_callback(
      np.shape(x), sharding, lambda idx, x=x: np.asarray(x)[idx]), tree)


def shard_batch(local_batch, mesh):
  """Builds global arrays, sharded over the batch axis, from this process's part of the batch."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def spmd(fn: Callable, mesh, in_specs, out_specs, *, donate_argnums=(), static_argnums=()):
  """``jit(shard_map(fn))`` with the project's conventions (axis 'batch', pmap-style grads)."""
  mapped = jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
  return jax.jit(mapped, donate_argnums=donate_argnums, static_argnums=static_argnums)


def to_host(tree) -> Any:
  """Fetches (replicated or fully addressable) arrays as numpy.

  One ``device_get`` of the whole tree: it starts every copy before waiting for any, where a
  fetch per leaf would wait for each in turn (a log step fetches 50 steps' metrics).
  """
  return jax.tree.map(np.asarray, jax.device_get(tree))


class StepsInFlight:
  """Keeps at most ``limit`` dispatched steps unfinished on the device.

  JAX dispatches asynchronously, so without a bound the host loop runs ahead of the device until
  the next fetch of metrics (up to ``log_every_steps`` steps). A stop request seen at step k's
  dispatch would then wait for every queued step before its checkpoint is written, which can
  outlast a preemption notice. Blocking on step ``k - limit``'s output after dispatching step k
  bounds that lag to ``limit`` steps, while ``limit >= 2`` still lets the host prepare the next
  batch while the device computes.
  """

  def __init__(self, limit: int = 2):
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
      raise ValueError(f'max_steps_in_flight={limit!r} is out of range; allowed: an integer >= 1.')
    self.limit = limit
    self._outputs = collections.deque()

  def add(self, step_output) -> None:
    """Records a just-dispatched step's output; waits for the oldest beyond the limit."""
    self._outputs.append(step_output)
    while len(self._outputs) > self.limit:
      jax.block_until_ready(self._outputs.popleft())

  def __len__(self) -> int:
    return len(self._outputs)


pmean = functools.partial(jax.lax.pmean, axis_name=AXIS)
psum = functools.partial(jax.lax.psum, axis_name=AXIS)
