"""Data-parallel SPMD: a 1-D device mesh, replicated state, batch sharded over axis ``'batch'``.

The per-device body of a step runs under ``jax.shard_map`` inside ``jax.jit`` (what ``pmap`` is
built on today). Inside the body a method computes its loss on its shard and averages gradients
with ``lax.pmean(grads, 'batch')``. ``check_vma`` is off so that gradients with respect to the
replicated parameters are per-device (the ``pmap`` convention) and the explicit ``pmean`` is the
one place they are averaged.
"""

import functools
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = 'batch'


def maybe_initialize_distributed(coordinator_address=None, num_processes=None, process_id=None,
                                 local_device_ids=None) -> None:
  """Calls ``jax.distributed.initialize`` when this run is one of several processes.

  Arguments left None are read by JAX from the standard environment (Cloud TPU metadata,
  SLURM, or ``JAX_COORDINATOR_ADDRESS``/``JAX_NUM_PROCESSES``/``JAX_PROCESS_ID``).
  """
  import os  # pylint: disable=g-import-not-at-top
  num_processes = num_processes or os.environ.get('JAX_NUM_PROCESSES')
  on_tpu_pod = bool(os.environ.get('TPU_WORKER_HOSTNAMES', '').count(','))
  if (num_processes is not None and int(num_processes) > 1) or on_tpu_pod:
    kwargs = {}
    if coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS'):
      kwargs['coordinator_address'] = coordinator_address or os.environ['JAX_COORDINATOR_ADDRESS']
    if num_processes is not None:
      kwargs['num_processes'] = int(num_processes)
    pid = process_id if process_id is not None else os.environ.get('JAX_PROCESS_ID')
    if pid is not None:
      kwargs['process_id'] = int(pid)
    if local_device_ids is not None:
      kwargs['local_device_ids'] = local_device_ids
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
    raise ValueError(f'{what}={global_batch_size} must divide over {jax.process_count()} processes.')
  return global_batch_size // n


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
  """Fetches (replicated or fully addressable) arrays as numpy."""
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


pmean = functools.partial(jax.lax.pmean, axis_name=AXIS)
psum = functools.partial(jax.lax.psum, axis_name=AXIS)
