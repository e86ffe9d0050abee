"""The one training loop: init, restore, step, evaluate, save. Knows nothing about methods.

Usable from Colab::

    from jaxrobust import train
    from configs import quickstart
    state, results = train.train_and_evaluate(quickstart.get_config(), '/tmp/run')
"""

import contextlib
import json
import time
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import PartitionSpec as P

from jaxrobust import (augmentations, checkpointing, config_keys, data, files, methods, models,
                       optim, parallel)
from jaxrobust.evaluation import clean
from jaxrobust.methods.base import Context
from jaxrobust.train_state import TrainState

NONFINITE_POLICIES = ('stop', 'skip')
_AUGMENT_TAG = 0xA06  # fold_in tag: the device augmentation's key, apart from the method's


class NonFiniteError(FloatingPointError):
  """The loss or a metric became NaN/Inf; the last good checkpoint is left as it was."""


# ----------------------------------------------------------------------------- validation


def _check_number(config, key: str, *, low=None, high=None, low_open=False, high_open=False,
                  integer=False, default=None) -> None:
  """ValueError unless ``config[key]`` is a number in the given range (names the range)."""
  value = config.get(key, default)
  if value is None:
    return
  ok_type = (isinstance(value, int) if integer else isinstance(value, (int, float)))
  if isinstance(value, bool) or not ok_type:
    raise ValueError(f'{key}={value!r} must be {"an integer" if integer else "a number"}.')
  too_low = low is not None and (value <= low if low_open else value < low)
  too_high = high is not None and (value >= high if high_open else value > high)
  if too_low or too_high or value != value:  # value != value: NaN
    lo = '' if low is None else f'{"(" if low_open else "["}{low}'
    hi = '' if high is None else f'{high}{")" if high_open else "]"}'
    allowed = (f'{lo}, {hi}' if lo and hi else
               f'{">" if low_open else ">="} {low}' if lo else f'{"<" if high_open else "<="} {high}')
    raise ValueError(f'{key}={value!r} is out of range; allowed: {allowed}.')


def _check_choice(config, key: str, allowed, default) -> None:
  value = config.get(key, default)
  if value not in allowed:
    raise ValueError(f'Unknown {key} {value!r}; valid: {", ".join(map(str, allowed))}.')


def validate_config(config) -> methods.Method:
  """Checks names and values that need no data, so bad input fails before anything is built.

  Covers the loop's own keys (names, ranges) and the method's :meth:`Method.validate` (eps < 0,
  unknown attack presets, ...). Data-dependent checks (dataset contents, batch size versus
  device count and dataset size) follow in :func:`build`, still before anything is compiled.

  Returns:
    The method, built from ``config`` (its constructor runs :meth:`Method.validate`).

  Raises:
    ValueError: naming the bad key and value and what is allowed.
  """
  config_keys.check(config)                       # a misspelt key, e.g. set from a notebook
  models.architecture(config.model)               # ValueError listing valid models
  method_cls = methods.get(config.method)         # ValueError listing valid methods
  _check_choice(config, 'optimizer', optim.OPTIMIZERS, 'sgd')
  _check_choice(config, 'lr_schedule', optim.SCHEDULES, 'cosine')
  _check_choice(config, 'nonfinite', NONFINITE_POLICIES, 'stop')
  _check_choice(config, 'stem', ('auto', 'cifar', 'imagenet'), 'auto')
  _check_choice(config, 'augment', ('auto',) + data.AUGMENTATIONS, 'auto')
  augmentations.device_augmentation(config)     # device_augment, cutout_size
  for key in ('batch_size', 'eval_batch_size'):
    _check_number(config, key, low=0, low_open=True, integer=True, default=1)
  _check_number(config, 'num_epochs', low=0, low_open=True)
  _check_number(config, 'learning_rate', low=0)
  _check_number(config, 'weight_decay', low=0)
  _check_number(config, 'momentum', low=0, high=1, high_open=True)
  _check_number(config, 'label_smoothing', low=0, high=1, high_open=True)
  _check_number(config, 'dropout_rate', low=0, high=1, high_open=True)
  _check_number(config, 'bn_momentum', low=0, high=1)
  _check_number(config, 'warmup_epochs', low=0)
  _check_number(config, 'lr_decay_factor', low=0, low_open=True)
  _check_number(config, 'grad_clip_norm', low=0)
  _check_number(config, 'eval_every_epochs', low=0)
  _check_number(config, 'image_size', low=0, integer=True)
  _check_number(config, 'max_eval_examples', low=0, integer=True)
  _check_number(config, 'checkpoint_every_steps', low=0, integer=True)
  _check_number(config, 'log_every_steps', low=0, integer=True)
  _check_number(config, 'max_steps_in_flight', low=1, integer=True)
  _check_number(config, 'keep_checkpoints', low=1, integer=True)
  # numpy's permutation seeds are >= 0; jax.random.PRNGKey keeps 32 bits (2**32 would be 0)
  _check_number(config, 'seed', low=0, high=2**32, high_open=True, integer=True)
  boundaries = config.get('lr_boundaries', ()) or ()
  if any(isinstance(b, bool) or not isinstance(b, (int, float)) or b < 0 for b in boundaries):
    raise ValueError(f'lr_boundaries={tuple(boundaries)!r}: allowed a tuple of epochs >= 0.')
  warmup = config.get('warmup_epochs', 0.0) or 0.0
  if warmup and warmup >= config.num_epochs:
    raise ValueError(f'warmup_epochs={warmup!r} must be below num_epochs={config.num_epochs!r}: '
                     f'the learning rate would never reach its peak.')
  if config.get('lr_schedule', 'cosine') == 'step':
    if not boundaries:
      raise ValueError("lr_schedule='step' needs lr_boundaries (epochs at which the learning rate "
                       "is multiplied by lr_decay_factor); for a fixed rate use 'constant'.")
    if warmup and min(boundaries) <= warmup:
      raise ValueError(f'lr_boundaries={tuple(boundaries)!r}: a boundary at or before the end of '
                       f'the warm-up (warmup_epochs={warmup!r}) would be lost; allowed epochs '
                       f'> {warmup!r}.')
  dataset = config.dataset
  if not isinstance(dataset, str) or not dataset.strip() or dataset.strip() == 'folder:':
    raise ValueError(f'dataset={dataset!r}: allowed digits, folder:/path/to/images '
                     f'(<split>/<label>/*.jpg) or a TFDS name such as '
                     f'{", ".join(data.KNOWN_TFDS)}.')
  return method_cls(config)                       # the method's own validate()


# ----------------------------------------------------------------------------- setup


def build(config, mesh=None):
  """Resolves data, method, model and optimizer; returns ``(info, method, model, tx, mesh, spe)``."""
  method = validate_config(config)
  mesh = mesh or parallel.make_mesh()
  parallel.check_batch_size(config.batch_size, mesh)
  info = data.get_info(config)
  n_train = info.num_examples[info.train_split]
  steps_per_epoch = n_train // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f'batch_size={config.batch_size} exceeds the {n_train} training examples.')
  one_step = f'1/{steps_per_epoch} (one step)'
  if int(config.num_epochs * steps_per_epoch) < 1:
    raise ValueError(f'num_epochs={config.num_epochs!r} is less than one step ({steps_per_epoch} '
                     f'steps per epoch); allowed: >= {one_step}.')
  eval_every = config.get('eval_every_epochs', 1) or 0
  if eval_every and int(eval_every * steps_per_epoch) < 1:
    raise ValueError(f'eval_every_epochs={eval_every!r} is less than one step ({steps_per_epoch} '
                     f'steps per epoch); allowed: 0 (only at the end) or >= {one_step}.')
  model = models.create_model(
      config.model, num_classes=info.num_classes, image_size=info.image_shape[0],
      affine_domains=method.affine_domains(),
      bn_axis_name=parallel.AXIS if config.get('sync_batch_stats', False) else None,
      mean=info.mean, std=info.std, stem=config.get('stem', 'auto'),
      dropout_rate=config.get('dropout_rate', 0.0), bn_momentum=config.get('bn_momentum', 0.9))
  tx = optim.make_optimizer(config, steps_per_epoch)
  return info, method, model, tx, mesh, steps_per_epoch


def create_train_state(config, method, model, tx, info, rng) -> TrainState:
  """Initial state on the host (numpy-backed jax arrays)."""
  init_rng, extras_rng, run_rng = jax.random.split(rng, 3)
  params, batch_stats = models.init_variables(model, init_rng, info.image_shape,
                                              method.bn_domains())
  extras = method.init_extras(extras_rng, params, batch_stats)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    batch_stats=batch_stats, rng=run_rng, extras=extras)


INTERNAL_METRICS = ('finite', 'state_finite')  # step flags, not logged as training metrics


def _all_finite(tree) -> jax.Array:
  """True iff every floating-point leaf of ``tree`` is free of NaN/Inf."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _saved_trees(state):
  """What an update may change and a checkpoint keeps: ``step`` and ``rng`` aside, everything."""
  return (state.params, state.opt_state, state.batch_stats, state.extras)


@jax.jit
def _state_is_finite(state) -> jax.Array:
  return _all_finite(_saved_trees(state))


def step_key(run_key, step, device) -> jax.Array:
  """The key of a step on a device: ``fold_in(fold_in(run_key, step), device)``.

  Draws shared by every device, or made outside the step, come from
  :func:`jaxrobust.methods.common.stream_key` instead, which never returns one of these.
  """
  return jax.random.fold_in(jax.random.fold_in(run_key, step), device)


def make_train_step(method, config, mesh):
  """``jit(shard_map(step))``: state replicated and donated, batch sharded over ``'batch'``.

  With ``config.device_augment`` or ``config.cutout_size`` set, the batch's images are first
  augmented on device (:func:`augmentations.device_augmentation`, a key of their own per step
  and device), so every method trains on AutoAugment / Cutout images without knowing it.

  Besides the method's metrics the step returns ``finite`` (1.0 iff every metric and every
  float of the new params/opt_state/batch_stats/extras is finite) and ``state_finite`` (the
  latter alone). With ``config.nonfinite='skip'`` a non-finite update is dropped: the state
  keeps its previous values and only ``step`` advances.
  """
  sync = config.get('sync_batch_stats', False)
  skip_nonfinite = config.get('nonfinite', 'stop') == 'skip'
  augment = augmentations.device_augmentation(config)

  def body(state, batch):
    rng = step_key(state.rng, state.step, jax.lax.axis_index(parallel.AXIS))
    if augment is not None:  # the input pipeline's on-device part; the method sees its output
      batch = {**batch, 'image': augment(batch['image'], jax.random.fold_in(rng, _AUGMENT_TAG))}
    new_state, metrics = method.train_step(state, batch, rng)
    if not sync:  # per-device batch statistics; keep one (averaged) copy of the running ones
      new_state = new_state.replace(batch_stats=parallel.pmean(new_state.batch_stats))
    metrics = parallel.pmean(metrics)
    metrics_finite = _all_finite(metrics)
    # A finite loss can still come with an overflowing gradient/update: check what gets saved.
    state_finite = jax.lax.pmin(_all_finite(_saved_trees(new_state)).astype(jnp.int32),
                                parallel.AXIS) > 0
    finite = jnp.logical_and(metrics_finite, state_finite)
    if skip_nonfinite:  # drop the update, keep counting steps
      kept = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state,
                          state.replace(step=state.step + 1))
      # Learning-rate schedules (the backbone's and any a method keeps in extras) still
      # advance, as a PyTorch scheduler steps past a skipped update, so they stay in step with
      # ``state.step``; the rest of the optimizer state (momenta, Adam's own count) is kept.
      is_schedule = lambda t: isinstance(t, optax.ScaleByScheduleState)
      new_state = jax.tree.map(lambda n, k: n if is_schedule(n) else k, new_state, kept,
                               is_leaf=is_schedule)
    metrics['finite'] = finite.astype(jnp.float32)
    metrics['state_finite'] = state_finite.astype(jnp.float32)
    return new_state, metrics

  return parallel.spmd(body, mesh, in_specs=(P(), P(parallel.AXIS)), out_specs=(P(), P()),
                       donate_argnums=(0,))


# ----------------------------------------------------------------------------- logging


class MetricsLog:
  """clu writers (TensorBoard + console) and a JSON-lines file, written by process 0."""

  def __init__(self, workdir: str):
    # imported here: clu pulls in TensorFlow (seconds), which validate_config must not wait for
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
    self.primary = jax.process_index() == 0
    workdir = files.as_path(workdir)
    self.writer = metric_writers.create_default_writer(
        str(workdir), just_logging=not self.primary, asynchronous=False)
    self.path = workdir / 'metrics.jsonl'

  def write(self, step: int, kind: str, values: dict) -> None:
    values = {k: float(v) for k, v in values.items()}
    self.writer.write_scalars(step, {f'{kind}/{k}': v for k, v in values.items()})
    if self.primary:
      with self.path.open('a') as f:
        f.write(json.dumps({'step': step, 'kind': kind, **values}) + '\n')

  def has(self, step: int, kind: str) -> bool:
    """Whether ``metrics.jsonl`` already holds a ``kind`` row at ``step``."""
    return _logged(self.path, step, kind)

  def close(self):
    self.writer.flush()
    self.writer.close()


def _logged(path, step: int, kind: str) -> bool:
  """Whether the ``metrics.jsonl`` at ``path`` holds a ``kind`` row at ``step`` (read by every
  process: the workdir is shared)."""
  if not path.exists():
    return False
  for line in path.read_text().splitlines():
    try:
      row = json.loads(line)
    except ValueError:  # a line cut short by a kill
      continue
    if row.get('step') == step and row.get('kind') == kind:
      return True
  return False


def _agreed(decision: bool) -> bool:
  """Process 0's ``decision``, on every process: a collective (an evaluation) must be entered by
  all of them, and each reads shared files (e.g. ``metrics.jsonl``) on its own."""
  if jax.process_count() == 1:
    return decision
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(multihost_utils.broadcast_one_to_all(np.int32(decision)))


def _fetch(pending: list) -> list:
  """``[(step, metrics)]`` with the metrics on the host, fetched in one transfer."""
  return list(zip([s for s, _ in pending], parallel.to_host([m for _, m in pending])))


def _format_eta(seconds: float) -> str:
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  return f'{h}h{rem // 60:02d}m' if h else f'{rem // 60}m{rem % 60:02d}s'


def _flatten_config(tree: dict, prefix: str = '') -> dict:
  """``{'a': {'b': 1}}`` -> ``{'a.b': 1}`` (nested ConfigDicts compare key by key)."""
  out = {}
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if isinstance(value, dict) and value:
      out.update(_flatten_config(value, name + '.'))
    else:
      out[name] = value
  return out


def config_changes(config, workdir) -> tuple[dict, list]:
  """Compares ``config`` with the ``config.json`` a previous run left in ``workdir``.

  Returns:
    ``(current, changes)``: the config as JSON-able dict, and ``[(key, old, new), ...]`` for
    every (dotted, nested) key whose value differs; ``'<unset>'`` stands for a missing key.
  """
  current = json.loads(config.to_json_best_effort())
  path = files.as_path(workdir) / 'config.json'
  if not path.exists():
    return current, []
  try:
    previous = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    logging.warning('Cannot read the previous %s (%s); not comparing configs.', path, e)
    return current, []
  old, new = _flatten_config(previous), _flatten_config(current)
  changes = [(k, old.get(k, '<unset>'), new.get(k, '<unset>')) for k in sorted(set(old) | set(new))
             if old.get(k, '<unset>') != new.get(k, '<unset>')]
  return current, changes


def _write_config(current: dict, workdir: str) -> None:
  if jax.process_index() == 0:
    files.write_text_atomic(files.as_path(workdir) / 'config.json',
                            json.dumps(current, indent=2, sort_keys=True))


def _warn_config_changes(changes: list) -> None:
  for key, old, new in changes:
    logging.warning('Resuming with a changed config: %s was %r, now %r.', key, old, new)


# ----------------------------------------------------------------------------- the loop


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       mesh=None) -> tuple[TrainState, dict]:
  """Trains ``config.method`` in ``workdir`` (resuming if it holds a checkpoint) and evaluates.

  Returns:
    ``(state, results)``: the final train state (on device) and the final metrics, also
    written to ``<workdir>/results.json``.
  """
  start_time = time.time()
  info, method, model, tx, mesh, steps_per_epoch = build(config, mesh)
  if config.get('init_from', ''):
    _init_from_dir(config.init_from)  # a bad path fails now, not after initialisation
  try:
    files.as_path(workdir).mkdir(parents=True, exist_ok=True)
  except OSError as e:  # a file, a path under a file, no permission: bad input, not a crash
    raise ValueError(f'--workdir={workdir} can not be used as the run directory: {e}') from e
  current_config, config_diff = config_changes(config, workdir)
  _warn_config_changes(config_diff)  # config.json is rewritten once the checkpoint matches
  total_steps = int(config.num_epochs * steps_per_epoch)
  logging.info('%s on %s: %s, %d devices (%d processes), %d steps of %d images.',
               config.method, info.name, config.model, mesh.devices.size, jax.process_count(),
               total_steps, config.batch_size)

  proc = dict(process_index=jax.process_index(), process_count=jax.process_count())
  data_dir = config.get('data_dir') or None
  # The same command again on a finished run has nothing to do (checked once restored) and
  # decodes no data; any other run reads its data first, so bad data fails before compiling.
  # Keys the saved config lacks came with a later version and did not change that run.
  saved = _saved_results(workdir)
  changed = [k for k, old, _ in config_diff if old != '<unset>']
  finished = None if changed else _finished_results(saved, workdir, total_steps)

  def sources():
    return (data.make_source(info, info.train_split, data_dir),
            data.make_source(info, info.eval_split, data_dir))
  if finished is None:
    train_source, eval_source = sources()

  def train_batches(num_batches: int, seed: int):
    it = data.train_iterator(info, global_batch_size=config.batch_size, seed=seed,
                             source=train_source, data_dir=data_dir, **proc)
    for _ in range(num_batches):
      yield parallel.shard_batch(next(it), mesh)

  method.setup(Context(config=config, model=model, tx=tx, info=info, mesh=mesh,
                       steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                       train_batches=train_batches))
  host_state = create_train_state(config, method, model, tx, info,
                                  jax.random.PRNGKey(config.seed))
  state = parallel.replicate(host_state, mesh)
  del host_state

  ckpt = checkpointing.Checkpointer(workdir, max_to_keep=config.get('keep_checkpoints', 3))
  try:
    restored, restored_step = ckpt.restore(state)
  except checkpointing.CheckpointMismatchError as e:
    ckpt.close()
    if config_diff:
      raise checkpointing.CheckpointMismatchError(
          f'{e} Its config.json differs from this run in: ' + ', '.join(
              f'{k} ({old!r} -> {new!r})' for k, old, new in config_diff[:8]) +
          (' ...' if len(config_diff) > 8 else '') + '.') from None
    raise
  if restored is not None and restored_step > total_steps:
    # the loop would not run, and the final save would label this state with the smaller step
    ckpt.close()
    raise ValueError(f'The checkpoint in {workdir} is at step {restored_step}, past the '
                     f'{total_steps} steps of this config (num_epochs={config.num_epochs}). Raise '
                     'num_epochs to continue it, or use a fresh --workdir.')
  if _agreed(finished is not None and restored is not None and restored_step == total_steps):
    ckpt.close()  # before config.json is rewritten: the finished run's own stays as it was
    logging.info('%s already holds this run, trained and evaluated (step %d); nothing to do.',
                 workdir, total_steps)
    return restored, finished or _finished_results(_saved_results(workdir), workdir,
                                                    total_steps) or {}
  # config.json describes the checkpoints: written once they are known to match this config.
  _write_config(current_config, workdir)
  if restored is not None:
    state = restored
    logging.info('Resumed from the checkpoint at step %d.', restored_step)
  elif config.get('init_from', ''):
    try:
      state = _init_from(config.init_from, state)
    except Exception:
      ckpt.close()
      raise
  start_step = int(jax.device_get(state.step))
  if finished is not None:  # its results, but not its final checkpoint: train after all
    train_source, eval_source = sources()
  earlier = _totals_before(saved, start_step)

  train_step = make_train_step(method, config, mesh)
  eval_step = clean.make_eval_step(model, mesh, tuple(method.eval_domains()))
  hooks = method.hooks()
  eval_batch_size = parallel.eval_batch_size(config.eval_batch_size, mesh)

  def run_eval(step):
    results = {}
    batches = data.eval_iterator(info, global_batch_size=eval_batch_size, source=eval_source,
                                 data_dir=data_dir,
                                 max_examples=config.get('max_eval_examples') or None, **proc)
    per_domain = clean.evaluate(eval_step, state.params, state.batch_stats, batches, mesh)
    for domain in method.eval_domains():  # the headline domain first (pytrees sort dict keys)
      res = per_domain[domain]
      prefix = '' if domain == models.MAIN else f'{domain}_'
      results.update({f'{prefix}{k}': v for k, v in res.items() if k != 'count'})
    log.write(step, 'eval', results)
    logging.info('eval @ step %d: %s', step,
                 ', '.join(f'{k}={v:.4f}' for k, v in results.items()))
    return results

  def fetched_and_checked(pending):
    """``pending`` on the host; under ``nonfinite='stop'`` a non-finite step raises."""
    pending = _fetch(pending)
    if config.get('nonfinite', 'stop') == 'stop':
      check_finite(pending)
    return pending

  def check_finite(pending):
    for s, m in pending:
      if float(m['finite']) < 1.0:
        bad = [k for k, v in m.items() if k not in INTERNAL_METRICS and not np.all(np.isfinite(v))]
        if float(m.get('state_finite', 1.0)) < 1.0:
          bad.append('parameters/optimizer state after the update (gradient overflow)')
        raise NonFiniteError(
            f'Non-finite {", ".join(bad) or "metric"} at step {s + 1} (update {s}); stopping. '
            f'The last good checkpoint in {ckpt.directory} (steps {ckpt.all_steps()}) is intact. '
            'Lower the learning rate, or set config.nonfinite="skip" to skip such updates.')

  def save(step_done):
    # The step's own check covers the update; this one covers hooks, so that a checkpoint is
    # never written from a NaN/Inf state.
    if not bool(parallel.to_host(_state_is_finite(state))):
      raise NonFiniteError(
          f'Non-finite parameters/optimizer state at step {step_done} (after a method hook); '
          f'not saving it. The last good checkpoint in {ckpt.directory} '
          f'(steps {ckpt.all_steps()}) is intact.')
    ckpt.save(step_done, state)

  log_every = max(1, config.get('log_every_steps', 50))
  ckpt_every = config.get('checkpoint_every_steps', 0) or steps_per_epoch
  eval_every = int(config.get('eval_every_epochs', 1) * steps_per_epoch) or total_steps
  learning_rate = optim.learning_rate_schedule(config, steps_per_epoch)  # for the log only
  batches = data.train_iterator(info, global_batch_size=config.batch_size, seed=config.seed,
                                start_step=start_step, source=train_source, data_dir=data_dir,
                                **proc)
  pending, window_start, window_step = [], time.time(), start_step
  in_flight = parallel.StepsInFlight(config.get('max_steps_in_flight', 2))
  skipped = earlier['skipped_updates']
  eval_results = {}
  stopped_by = None
  step = start_step
  # Opened last, right before the try that closes them: signal handlers replaced by a run that
  # failed to start would leave a notebook's Ctrl-C only logging "will save a checkpoint".
  log = MetricsLog(workdir)
  # multi-process runs agree on a stop every 10 steps, keeping the collective off most steps
  preemption = checkpointing.PreemptionHandler(sync_every_steps=10)
  # The callbacks run in reverse, each even if one before it fails: the checkpointer closes
  # first (waiting for the last save) while a signal still only asks for a stop, then the log,
  # then the signal handlers are restored.
  with contextlib.ExitStack() as cleanup:
    cleanup.callback(preemption.restore_handlers)
    cleanup.callback(log.close)
    cleanup.callback(ckpt.close)
    if 0 < start_step < total_steps and start_step % eval_every == 0 and _agreed(
        not log.has(start_step, 'eval')):
      # a stop that landed on an evaluation step saved before evaluating (its grace period is
      # short): the resumed run owes that evaluation
      eval_results = run_eval(start_step)
    for step in range(start_step, total_steps):
      state, metrics = train_step(state, parallel.shard_batch(next(batches), mesh))
      pending.append((step, metrics))
      in_flight.add(metrics['finite'])  # bounds how far a stop request lags the device
      done = step + 1
      for hook in hooks:  # a hook prepares later steps: none runs after the last one
        if done % hook.every_steps == 0 and done < total_steps:
          state = hook.fn(state)
      at_log = done % log_every == 0 or done == total_steps
      at_ckpt = done % ckpt_every == 0
      stop = preemption.should_stop()
      if at_log or at_ckpt or stop:
        pending = fetched_and_checked(pending)
        applied = [m for _, m in pending if float(m['finite']) >= 1.0]
        skipped += len(pending) - len(applied)
        # means over the applied updates: a skipped step's NaN loss would make the window NaN
        means = {k: float(np.mean([m[k] for m in applied])) for k in pending[-1][1]
                 if k not in INTERNAL_METRICS and applied}
        elapsed = time.time() - window_start
        rate = (done - window_step) * config.batch_size / max(elapsed, 1e-9)
        means.update(images_per_sec=rate, learning_rate=float(learning_rate(step)),
                     skipped_updates=skipped)
        log.write(done, 'train', means)
        eta = (total_steps - done) * config.batch_size / max(rate, 1e-9)
        logging.info('step %d/%d (epoch %.2f) | loss %.4f | %.0f img/s | ETA %s', done,
                     total_steps, done / steps_per_epoch, means.get('loss', float('nan')), rate,
                     _format_eta(eta))
        pending, window_start, window_step = [], time.time(), done
      if at_ckpt or stop:  # before any evaluation: a preemption's grace period is short
        save(done)
      if stop:
        stopped_by = preemption.signal_name or 'stop request'
        ckpt.wait()  # committed before saying so (its save runs in the background)
        logging.warning('Received %s: saved the checkpoint at step %d; exiting. Run the same '
                        'command again to resume.', stopped_by, done)
        break
      if done % eval_every == 0 and done != total_steps:
        pending = fetched_and_checked(pending)  # steps since the last log: never evaluate NaN
        eval_results = run_eval(done)
    else:
      done = total_steps
    if stopped_by is None:
      if done != start_step or not ckpt.all_steps():
        save(done)
        ckpt.wait()  # a preemption during the final evaluation loses only the evaluation
      eval_results = run_eval(done)

  results = {'step': int(done), 'stopped_by': stopped_by, 'skipped_updates': skipped,
             'wall_time_s': earlier['wall_time_s'] + time.time() - start_time,
             **{f'eval_{k}': v for k, v in eval_results.items()}}
  if jax.process_index() == 0:
    files.write_text_atomic(files.as_path(workdir) / 'results.json',
                            json.dumps(results, indent=2))
  return state, results


def _saved_results(workdir: str) -> dict:
  """The ``results.json`` an earlier run left in ``workdir``, or {} (none, or unreadable)."""
  path = files.as_path(workdir) / 'results.json'
  if not path.exists():
    return {}
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as e:  # e.g. cut short by a kill while being written
    logging.warning('Cannot read %s (%s); taken as absent: wall time and skipped updates count '
                    'from 0, and a finished run is evaluated again.', path, e)
    return {}


def _totals_before(saved: dict, start_step: int) -> dict:
  """``wall_time_s`` and ``skipped_updates`` of the stopped runs this one resumes (0 if fresh).

  A stopped run writes ``results.json`` with ``stopped_by`` and the step of its last checkpoint; a
  run resuming from exactly that step carries both on, so that they describe the whole training
  however often it was preempted. Any other run from that step (a finished run evaluated again,
  e.g. with a changed config, or extended with more epochs) carries them on too. (After a crash,
  which writes no results, they restart at 0.)

  Args:
    saved: :func:`_saved_results` of the workdir.
    start_step: the step this run starts from.
  """
  if start_step == 0 or saved.get('step') != start_step:
    return {'wall_time_s': 0.0, 'skipped_updates': 0}
  # stopped there, or finished there without its evaluation
  return {'wall_time_s': float(saved.get('wall_time_s', 0.0)),
          'skipped_updates': int(saved.get('skipped_updates', 0))}


def _finished_results(saved: dict, workdir: str, total_steps: int) -> Optional[dict]:
  """``saved`` (:func:`_saved_results`) if it is a run that finished ``total_steps`` and logged
  its final evaluation in ``workdir``, else None."""
  done = saved.get('step') == total_steps and not saved.get('stopped_by')
  logged = done and _logged(files.as_path(workdir) / 'metrics.jsonl', total_steps, 'eval')
  return saved if logged else None


def _init_from_dir(path: str) -> str:
  """The checkpoints directory of ``init_from=path``; its ValueError names the config key."""
  try:
    return checkpointing.checkpoints_dir(path)
  except ValueError as e:
    raise ValueError(f'init_from={path!r}: {e}') from e


def _init_from(path: str, state: TrainState) -> TrainState:
  """Starts from another run's params and BN statistics (not its optimizer or extras)."""
  directory = _init_from_dir(path)
  try:  # numpy arrays: independent of the source run's device count and topology
    raw, step = checkpointing.load_arrays(directory)
  except ValueError as e:
    raise ValueError(f'init_from={path!r}: {e}') from e
  params, copied = _merge(state.params, raw['params'], 'params')
  if not copied:  # e.g. another architecture: nothing would be transferred, silently
    raise ValueError(f'init_from={path!r}: none of its parameters has a name of this model '
                     f'(e.g. it has {sorted(raw["params"])[:4]}, this model '
                     f'{sorted(state.params)[:4]}); was it trained with another architecture?')
  if models.MAIN not in raw['batch_stats']:
    raise ValueError(f'init_from={path!r}: it has no {models.MAIN!r} BatchNorm statistics (it '
                     f'has {sorted(raw["batch_stats"])}).')
  stats = dict(state.batch_stats)
  for domain in stats:  # every domain starts from the source run's main statistics
    src = raw['batch_stats'].get(domain, raw['batch_stats'][models.MAIN])
    stats[domain], _ = _merge(state.batch_stats[domain], src, f'batch_stats/{domain}')
  logging.info('Initialised %d of %d param arrays and the BN statistics from %s (step %d).',
               copied, len(jax.tree.leaves(state.params)), directory, step)
  return state.replace(params=params, batch_stats=stats)


def _merge(target, source, what):
  """Copies ``source`` leaves into ``target``'s structure/sharding; missing ones keep target's.

  Returns:
    ``(merged, number of leaves copied from source)``.
  """
  flat_src = {jax.tree_util.keystr(p): v for p, v in
              jax.tree_util.tree_flatten_with_path(source)[0]}
  copied = []

  def pick(path, t):
    key = jax.tree_util.keystr(path)
    if key not in flat_src:
      # per-domain affine parameters a plain backbone lacks (scale_aux, bias_aux) start from
      # its shared ones, as the auxiliary BN's statistics start from its main statistics
      name = getattr(path[-1], 'key', None)
      shared = name.split('_')[0] if isinstance(name, str) else None
      if shared in ('scale', 'bias') and name != shared:
        key = jax.tree_util.keystr(path[:-1] + (jax.tree_util.DictKey(shared),))
      if key not in flat_src:
        return t
    v = np.asarray(flat_src[key])
    if v.shape != t.shape:
      raise ValueError(f'init_from: {what}{key} has shape {v.shape}, this model needs {t.shape}.')
    copied.append(key)
    return jax.device_put(v.astype(t.dtype), t.sharding)
  return jax.tree_util.tree_map_with_path(pick, target), len(copied)
