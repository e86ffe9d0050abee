"""Orbax checkpoints in the workdir: periodic and final saves, keep-K, automatic resume.

Layout: ``<workdir>/checkpoints/<step>/`` (an orbax ``CheckpointManager`` with one
``StandardCheckpointHandler`` item). Orbax writes a step into ``<step>.orbax-checkpoint-tmp-*``
and renames it when complete, so a save cut short by a crash never looks like a checkpoint.

Restore procedure (:meth:`Checkpointer.restore`), newest step first:

1. Read the step's metadata (tree of array paths, shapes, dtypes). If it is readable and differs
   from the run's state, raise :class:`CheckpointMismatchError` naming what differs (e.g. the
   ``batch_stats/aux`` statistics a method needs): a checkpoint of another model or method is a
   user error, never a reason to fall back or to start from scratch.
2. Restore the arrays into the run's structure and shardings. If that fails with an error that
   damaged files give (undecodable JSON metadata, missing files or items, tensorstore's
   DATA_LOSS / NOT_FOUND / OUT_OF_RANGE for truncated or garbled arrays, an empty step
   directory), warn, move the step directory to
   ``<workdir>/checkpoints_unreadable/<step>`` — kept for inspection, never deleted — and try
   the next older step. Moving it aside matters: orbax would otherwise keep it as the "latest"
   step and refuse to save that step again, so the resumed run could never replace it.
   Any other failure (out of memory, storage unavailable, no permission, an I/O error, a
   library's TypeError) raises and leaves every step in place: setting readable steps aside on
   a guess would restart training from step 0.
3. No readable step left: start from scratch, with a warning if there were steps.

In a multi-process run every process calls every method (saves and restores are collective);
processes agree on whether a restore succeeded, and only process 0 moves directories.

Workdirs may be local paths or URIs such as ``gs://bucket/run`` (:mod:`jaxrobust.files`).
"""

import json
import os
import signal
import threading
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from jaxrobust import files

UNREADABLE_DIR = 'checkpoints_unreadable'


class CheckpointMismatchError(ValueError):
  """A checkpoint exists but belongs to a different model/method configuration."""


# ----------------------------------------------------------------------------- tree comparison


def _key_name(key) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def leaf_specs(tree) -> dict:
  """``{'params/stem_conv/kernel': (shape, dtype_name)}`` for every array leaf of ``tree``.

  Paths use plain names, so a train state (attributes, namedtuples) and orbax's metadata of it
  (dicts, lists) give the same keys.
  """
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    name = '/'.join(_key_name(k) for k in path)
    shape = tuple(getattr(leaf, 'shape', np.shape(leaf)))
    dtype = getattr(leaf, 'dtype', None)
    out[name] = (shape, np.dtype(dtype).name if dtype is not None else None)
  return out


def _roots(paths: set, other: set) -> list:
  """The shortest prefixes of ``paths`` that ``other`` has nothing under (what is wholly absent)."""
  other_prefixes = set()
  for p in other:
    parts = p.split('/')
    other_prefixes.update('/'.join(parts[:i]) for i in range(1, len(parts) + 1))
  roots = {}
  for p in sorted(paths):
    parts = p.split('/')
    for i in range(1, len(parts) + 1):
      prefix = '/'.join(parts[:i])
      if prefix not in other_prefixes:
        roots[prefix] = roots.get(prefix, 0) + 1
        break
  return sorted(roots.items())


def _listing(roots: list, limit: int = 4) -> str:
  items = [f'{r} ({n} arrays)' if n > 1 else r for r, n in roots[:limit]]
  more = f' and {len(roots) - limit} more' if len(roots) > limit else ''
  return ', '.join(items) + more


def describe_mismatch(saved: dict, wanted: dict) -> Optional[str]:
  """What differs between a checkpoint's leaf specs and the run's, or None if they match.

  Args:
    saved: :func:`leaf_specs` of the checkpoint (from its metadata).
    wanted: :func:`leaf_specs` of the run's train state.

  Returns:
    A sentence naming the arrays the run needs but the checkpoint lacks, the arrays the
    checkpoint has that the run does not, and arrays whose shape/dtype differ.
  """
  parts = []
  missing = set(wanted) - set(saved)
  extra = set(saved) - set(wanted)
  if missing:
    parts.append(f'this run needs {_listing(_roots(missing, set(saved)))}, which the checkpoint '
                 'lacks')
  if extra:
    parts.append(f'the checkpoint has {_listing(_roots(extra, set(wanted)))}, which this run '
                 'lacks')
  # parameters first: their shapes say most directly which model wrote the checkpoint
  differ = sorted((k for k in set(saved) & set(wanted) if saved[k] != wanted[k]),
                  key=lambda k: (not k.startswith('params/'), k))
  if differ:
    shown = '; '.join(f'{k} is {saved[k][0]} {saved[k][1]} in the checkpoint, {wanted[k][0]} '
                      f'{wanted[k][1]} here' for k in differ[:2])
    parts.append(shown + (f' (and {len(differ) - 2} more arrays differ)' if len(differ) > 2
                          else ''))
  return '; '.join(parts) or None


# ----------------------------------------------------------------------------- processes


def _all_processes(flag: bool) -> bool:
  """True iff ``flag`` is true on every process (a collective in multi-process runs)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.all(multihost_utils.process_allgather(np.array(flag))))


def _any_process(flag: bool) -> bool:
  return not _all_processes(not flag)


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


# ----------------------------------------------------------------------------- checkpointer


# Restore errors that say the machine or the storage failed, not the checkpoint's files.
_TROUBLE_MARKERS = ('RESOURCE_EXHAUSTED', 'out of memory', 'UNAVAILABLE', 'DEADLINE_EXCEEDED',
                    'PERMISSION_DENIED', 'UNAUTHENTICATED')


# What orbax/tensorstore raise for a checkpoint's own damaged files: truncated or garbled JSON
# metadata, missing files or items, truncated or undecodable array data (tensorstore status
# codes at the start of the message).
_DAMAGE_TYPES = (json.JSONDecodeError, UnicodeDecodeError, FileNotFoundError)
_DAMAGE_CODES = ('NOT_FOUND:', 'OUT_OF_RANGE:', 'DATA_LOSS:')


def _machine_or_storage_trouble(error: Exception) -> bool:
  """Whether a restore failed for a reason other than damaged files (out of memory, storage
  unreachable, no permission): such a checkpoint must be left in place, not set aside."""
  text = f'{type(error).__name__}: {error}'.lower()
  return (isinstance(error, (MemoryError, PermissionError, ConnectionError, TimeoutError)) or
          any(m.lower() in text for m in _TROUBLE_MARKERS))


def _damaged_files(error: Exception) -> bool:
  """Whether a restore error is one that damaged checkpoint files give. Any other error (an I/O
  error, a library's TypeError) leaves the checkpoint in place: setting readable steps aside on
  a guess would restart training from step 0."""
  if isinstance(error, _DAMAGE_TYPES):
    return True
  if isinstance(error, KeyError) and 'was not found in the checkpoint' in str(error):
    return True  # an empty step directory
  return isinstance(error, ValueError) and str(error).startswith(_DAMAGE_CODES)


class Checkpointer:
  """Saves and restores train states under ``<workdir>/checkpoints`` (see module docstring)."""

  def __init__(self, workdir: str, *, max_to_keep: int = 3, async_save: bool = True):
    if max_to_keep is not None and max_to_keep < 1:
      raise ValueError(f'keep_checkpoints={max_to_keep} must be >= 1.')
    self.workdir = files.as_path(workdir)
    self.directory = self.workdir / 'checkpoints'
    self.unreadable_directory = self.workdir / UNREADABLE_DIR
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save)
    # Registering the handler up front makes item_metadata() readable before any restore.
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_handlers=ocp.StandardCheckpointHandler())

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state) -> None:
    """Saves ``state`` as ``step`` (asynchronously); a step already on disk is left as it is."""
    # Agreed: the save is collective, and a process whose listing lags (a cached network file
    # system) entering it alone would hang every process.
    if _any_process(step in self.manager.all_steps()):
      return
    self.manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def saved_specs(self, step: int) -> Optional[dict]:
    """:func:`leaf_specs` of a saved step from its metadata, or None if that is unreadable."""
    try:
      meta = self.manager.item_metadata(step)
      tree = getattr(meta, 'tree', meta)
      return leaf_specs(tree) if tree is not None else None
    except Exception:  # pylint: disable=broad-except
      return None

  def _set_aside(self, step: int) -> str:
    """Moves an unreadable step out of orbax's directory (process 0); returns where it went."""
    _barrier(f'jaxrobust_before_set_aside_{step}')  # every process picks the same name
    src = self.directory / str(step)
    dst = self.unreadable_directory / str(step)
    n = 1
    while dst.exists():
      dst = self.unreadable_directory / f'{step}.{n}'
      n += 1
    if jax.process_index() == 0 and src.exists():
      self.unreadable_directory.mkdir(parents=True, exist_ok=True)
      src.rename(dst)
    _barrier(f'jaxrobust_set_aside_{step}')
    self.manager.reload()
    return dst

  def restore(self, target) -> tuple[Optional[Any], Optional[int]]:
    """Restores the newest readable checkpoint into the structure/shardings of ``target``.

    Args:
      target: a train state (e.g. the freshly initialised one) whose tree structure, shapes,
        dtypes and shardings the restored state takes.

    Returns:
      ``(state, step)``, or ``(None, None)`` when there is no readable checkpoint.

    Raises:
      CheckpointMismatchError: a checkpoint's structure differs from ``target``'s.
    """
    wanted = leaf_specs(target)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    had_steps = bool(self.all_steps())
    for step in reversed(self.all_steps()):
      saved = self.saved_specs(step)
      problem = describe_mismatch(saved, wanted) if saved is not None else None
      if _any_process(problem is not None):
        raise CheckpointMismatchError(
            f'Checkpoint {self.directory}/{step} was written by a different model or method: '
            f'{problem or "its structure differs on another process"}. Use a fresh --workdir, '
            'or the config that wrote it.')
      error, state, kept = None, None, False
      try:
        state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
      except Exception as e:  # pylint: disable=broad-except
        error = f'{type(e).__name__}: {(str(e).splitlines() or [""])[0][:300]}'
        trouble = _machine_or_storage_trouble(e)
        kept = trouble or not _damaged_files(e)
        why = ('This looks like a problem of the machine or the storage (memory, network, '
               'permissions), not a damaged checkpoint' if trouble else
               'This is not an error that damaged checkpoint files give (truncated, missing or '
               'undecodable files); if the checkpoint is damaged all the same, move it to '
               f'{self.unreadable_directory}/{step} and run again to resume from an older one')
      if _any_process(kept):
        detail = f'{error}. {why}' if kept else 'failed on another process (see its log)'
        raise RuntimeError(f'Could not read checkpoint {self.directory}/{step}: {detail}. It was '
                           'left in place: fix the cause and run again to resume.')
      if _all_processes(error is None):
        return state, step
      moved = self._set_aside(step)
      logging.warning('Checkpoint at step %d is unreadable (%s). Moved it to %s (kept, not '
                      'deleted); trying an older checkpoint.', step,
                      error or 'failed on another process', moved)
    if had_steps:
      logging.warning('No readable checkpoint in %s; starting from scratch.', self.directory)
    return None, None

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def checkpoints_dir(path) -> epath.Path:
  """``<path>/checkpoints``, or ``path`` itself if it is one; ValueError if it does not exist."""
  path = files.as_path(path)
  directory = path if path.name == 'checkpoints' else path / 'checkpoints'
  if not directory.is_dir():
    raise ValueError(f'No checkpoints directory at {directory}.')
  return directory


def load_arrays(workdir, step: Optional[int] = None) -> tuple[dict, int]:
  """Reads a saved train state as nested dicts/lists of numpy arrays (no model needed).

  Args:
    workdir: a run's workdir (or its ``checkpoints`` directory), local or a URI.
    step: the step to read; the newest if None.

  Returns:
    ``(tree, step)`` where ``tree`` has ``'params'``, ``'batch_stats'``, ``'opt_state'``, ...
  """
  directory = checkpoints_dir(workdir)
  mgr = ocp.CheckpointManager(directory, item_handlers=ocp.StandardCheckpointHandler())
  try:
    step = mgr.latest_step() if step is None else step
    if step is None or step not in mgr.all_steps():
      raise ValueError(f'No checkpoint for step {step} in {directory}; it has {mgr.all_steps()}.')
    tree = mgr.item_metadata(step).tree
  finally:
    mgr.close()
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  arrays = ocp.PyTreeCheckpointer().restore(
      directory / str(step) / 'default',
      args=ocp.args.PyTreeRestore(restore_args=restore_args))
  return arrays, step


# ----------------------------------------------------------------------------- preemption


class PreemptionHandler:
  """Turns SIGTERM/SIGINT/SIGHUP into a request to save and stop at the next step boundary.

  SIGHUP is what a run in the foreground of an interactive terminal receives when it closes (a
  dropped SSH login); where it is ignored already (``nohup``), it stays ignored, so such a run
  goes on. (A command run over SSH without a terminal, e.g. ``gcloud ... ssh --command=...``, may
  get no signal at all when the connection drops, only a closed output: run it under ``nohup``
  with a log file.)

  A second signal while a stop is pending gives up on the clean stop: the previous handlers
  are restored and SIGINT raises ``KeyboardInterrupt``, SIGTERM or SIGHUP is re-delivered.

  In a multi-process run the processes agree (an all-gather) on whether any of them was
  signalled; to keep that collective off the per-step path it runs only every
  ``sync_every_steps`` calls, which every process makes at the same steps.
  """

  def __init__(self, signals=(signal.SIGTERM, signal.SIGINT, signal.SIGHUP),
               sync_every_steps: int = 10):
    self._event = threading.Event()
    self._previous = {}
    self._calls = 0
    self.sync_every_steps = max(1, sync_every_steps)
    self.signal_name = None
    if threading.current_thread() is threading.main_thread():
      for sig in signals:
        if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
          continue
        self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    del frame
    if self._event.is_set():  # second signal: stop now, without the checkpoint
      self.restore_handlers()
      if signum == signal.SIGINT:
        raise KeyboardInterrupt
      os.kill(os.getpid(), signum)
      return
    self.signal_name = signal.Signals(signum).name
    logging.warning('Received %s: will save a checkpoint and stop after the current step '
                    '(send it again to stop at once, without saving).', self.signal_name)
    self._event.set()

  def request_stop(self, reason: str = 'stop request') -> None:
    """Asks the loop to save and stop, as a signal would (e.g. from a notebook)."""
    self.signal_name = self.signal_name or reason
    self._event.set()

  def should_stop(self) -> bool:
    """True when a stop was requested (on any process: agreed across processes)."""
    self._calls += 1
    flag = self._event.is_set()
    if jax.process_count() > 1:
      if self._calls % self.sync_every_steps:
        return False
      flag = _any_process(flag)
      if flag and self.signal_name is None:
        self.signal_name = 'a signal to another process'
    return flag

  def restore_handlers(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}
