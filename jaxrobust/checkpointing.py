"""Orbax checkpoints in the workdir: periodic and final saves, keep-K, automatic resume.

Restoring tries the newest checkpoint first and falls back to older ones, with a warning, when a
checkpoint is unreadable (e.g. a partially written one after a crash); nothing is ever deleted
on restore. A checkpoint whose structure does not match the run (different model or method)
fails with a message naming what differs.
"""

import os
import signal
import threading
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging


class CheckpointMismatchError(ValueError):
  """A checkpoint exists but belongs to a different model/method configuration."""


def _paths(tree) -> set:
  return {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}


class Checkpointer:
  """Saves and restores train states under ``<workdir>/checkpoints``."""

  def __init__(self, workdir: str, *, max_to_keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state) -> None:
    if step in self.manager.all_steps():
      return
    self.manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def _saved_paths(self, step) -> Optional[set]:
    try:
      meta = self.manager.item_metadata(step)
      tree = getattr(meta, 'tree', meta)
      return _paths(tree) if tree is not None else None
    except Exception:  # pylint: disable=broad-except
      return None

  def restore(self, target) -> tuple[Optional[Any], Optional[int]]:
    """Restores the newest readable checkpoint into the structure/shardings of ``target``.

    Returns:
      ``(state, step)``, or ``(None, None)`` when there is no checkpoint.

    Raises:
      CheckpointMismatchError: the newest readable checkpoint has a different structure.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    for step in reversed(self.all_steps()):
      saved = self._saved_paths(step)
      if saved is not None:
        wanted = _paths(target)
        if saved != wanted:
          missing, extra = sorted(wanted - saved), sorted(saved - wanted)
          raise CheckpointMismatchError(
              f'Checkpoint {self.directory}/{step} does not match this run\'s model/method: '
              f'missing {missing[:5]}{" ..." if len(missing) > 5 else ""}, '
              f'unexpected {extra[:5]}{" ..." if len(extra) > 5 else ""}. '
              'Use a fresh --workdir, or the config that wrote it.')
      try:
        state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
        return state, step
      except Exception as e:  # pylint: disable=broad-except
        logging.warning('Checkpoint at step %d is unreadable (%s: %s); trying an older one. '
                        'It is left on disk.', step, type(e).__name__, str(e).splitlines()[0][:200])
    if self.all_steps():
      logging.warning('No readable checkpoint in %s; starting from scratch.', self.directory)
    return None, None

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


class PreemptionHandler:
  """Turns SIGTERM/SIGINT into a request to save and stop at the next step boundary."""

  def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
    self._event = threading.Event()
    self._previous = {}
    self.signal_name = None
    if threading.current_thread() is threading.main_thread():
      for sig in signals:
        self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    del frame
    self.signal_name = signal.Signals(signum).name
    self._event.set()

  def should_stop(self) -> bool:
    """True when any process received a stop signal (agreed across processes)."""
    flag = self._event.is_set()
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      flag = bool(np.any(multihost_utils.process_allgather(np.array(flag))))
    return flag

  def restore_handlers(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
