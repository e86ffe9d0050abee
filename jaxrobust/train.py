"""The one training loop: init, restore, step, evaluate, save. Knows nothing about methods.

Usable from Colab::

    from jaxrobust import train
    from configs import quickstart
    state, results = train.train_and_evaluate(quickstart.get_config(), '/tmp/run')
"""

import json
import os
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers
from jax.sharding import PartitionSpec as P

from jaxrobust import checkpointing, data, methods, models, optim, parallel
from jaxrobust.evaluation import clean
from jaxrobust.methods.base import Context
from jaxrobust.train_state import TrainState

NONFINITE_POLICIES = ('stop', 'skip')


class NonFiniteError(FloatingPointError):
  """The loss or a metric became NaN/Inf; the last good checkpoint is left as it was."""


# ----------------------------------------------------------------------------- validation


def validate_config(config) -> None:
  """Checks names and values that need no data, so bad input fails before anything is built."""
  methods.get(config.method)                      # ValueError listing valid methods
  models.architecture(config.model)               # ValueError listing valid models
  if config.get('optimizer', 'sgd') not in optim.OPTIMIZERS:
    raise ValueError(f'Unknown optimizer {config.optimizer!r}; valid: {", ".join(optim.OPTIMIZERS)}.')
  if config.get('lr_schedule', 'cosine') not in optim.SCHEDULES:
    raise ValueError(f'Unknown lr_schedule {config.lr_schedule!r}; valid: '
                     f'{", ".join(optim.SCHEDULES)}.')
  for key in ('batch_size', 'eval_batch_size'):
    if int(config.get(key, 1)) <= 0:
      raise ValueError(f'{key} must be positive, got {config.get(key)}.')
  if config.num_epochs <= 0:
    raise ValueError(f'num_epochs must be positive, got {config.num_epochs}.')
  if config.learning_rate < 0:
    raise ValueError(f'learning_rate must be >= 0, got {config.learning_rate}.')
  if config.get('nonfinite', 'stop') not in NONFINITE_POLICIES:
    raise ValueError(f'Unknown nonfinite policy {config.nonfinite!r}; valid: '
                     f'{", ".join(NONFINITE_POLICIES)}.')
  dataset = config.dataset
  if not (dataset == 'digits' or dataset.startswith('folder:') or dataset.strip()):
    raise ValueError('dataset must be digits, folder:/path or a TFDS name.')


# ----------------------------------------------------------------------------- setup


def build(config, mesh=None):
  """Resolves data, method, model and optimizer; returns ``(info, method, model, tx, mesh, spe)``."""
  validate_config(config)
  mesh = mesh or parallel.make_mesh()
  parallel.check_batch_size(config.batch_size, mesh)
  parallel.check_batch_size(config.eval_batch_size, mesh, 'eval_batch_size')
  method = methods.get(config.method)(config)
  info = data.get_info(config)
  n_train = info.num_examples[info.train_split]
  steps_per_epoch = n_train // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f'batch_size={config.batch_size} exceeds the {n_train} training examples.')
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


def make_train_step(method, config, mesh):
  """``jit(shard_map(step))``: state replicated and donated, batch sharded over ``'batch'``."""
  sync = config.get('sync_batch_stats', False)
  skip_nonfinite = config.get('nonfinite', 'stop') == 'skip'

  def body(state, batch):
    rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step),
                             jax.lax.axis_index(parallel.AXIS))
    new_state, metrics = method.train_step(state, batch, rng)
    if not sync:  # per-device batch statistics; keep one (averaged) copy of the running ones
      new_state = new_state.replace(batch_stats=parallel.pmean(new_state.batch_stats))
    metrics = parallel.pmean(metrics)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(metrics)]))
    if skip_nonfinite:  # drop the update, keep counting steps
      new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state,
                               state.replace(step=state.step + 1))
    metrics['finite'] = finite.astype(jnp.float32)
    return new_state, metrics

  return parallel.spmd(body, mesh, in_specs=(P(), P(parallel.AXIS)), out_specs=(P(), P()),
                       donate_argnums=(0,))


# ----------------------------------------------------------------------------- logging


class MetricsLog:
  """clu writers (TensorBoard + console) and a JSON-lines file, written by process 0."""

  def __init__(self, workdir: str):
    self.primary = jax.process_index() == 0
    self.writer = metric_writers.create_default_writer(
        workdir, just_logging=not self.primary, asynchronous=False)
    self.path = os.path.join(workdir, 'metrics.jsonl')

  def write(self, step: int, kind: str, values: dict) -> None:
    values = {k: float(v) for k, v in values.items()}
    self.writer.write_scalars(step, {f'{kind}/{k}': v for k, v in values.items()})
    if self.primary:
      with open(self.path, 'a') as f:
        f.write(json.dumps({'step': step, 'kind': kind, **values}) + '\n')

  def close(self):
    self.writer.flush()
    self.writer.close()


def _format_eta(seconds: float) -> str:
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  return f'{h}h{rem // 60:02d}m' if h else f'{rem // 60}m{rem % 60:02d}s'


def _config_dump(config, workdir) -> None:
  """Writes config.json; on resume warns about every key whose value changed."""
  path = os.path.join(workdir, 'config.json')
  current = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    with open(path) as f:
      previous = json.load(f)
    for key in sorted(set(previous) | set(current)):
      if previous.get(key, '<unset>') != current.get(key, '<unset>'):
        logging.warning('Resuming with a changed config: %s was %r, now %r.', key,
                        previous.get(key, '<unset>'), current.get(key, '<unset>'))
  if jax.process_index() == 0:
    with open(path, 'w') as f:
      json.dump(current, f, indent=2, sort_keys=True)


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
  os.makedirs(workdir, exist_ok=True)
  _config_dump(config, workdir)
  total_steps = int(config.num_epochs * steps_per_epoch)
  logging.info('%s on %s: %s, %d devices (%d processes), %d steps of %d images.',
               config.method, info.name, config.model, mesh.devices.size, jax.process_count(),
               total_steps, config.batch_size)

  proc = dict(process_index=jax.process_index(), process_count=jax.process_count())
  data_dir = config.get('data_dir') or None
  train_source = data.InMemorySource(info, info.train_split, data_dir) if info.in_memory else None
  eval_source = data.InMemorySource(info, info.eval_split, data_dir) if info.in_memory else None

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
  restored, restored_step = ckpt.restore(state)
  if restored is not None:
    state = restored
    logging.info('Resumed from the checkpoint at step %d.', restored_step)
  elif config.get('init_from', ''):
    state = _init_from(config.init_from, state)
  start_step = int(jax.device_get(state.step))

  train_step = make_train_step(method, config, mesh)
  eval_steps = {d: clean.make_eval_step(model, mesh, domain=d) for d in method.eval_domains()}
  log = MetricsLog(workdir)
  preemption = checkpointing.PreemptionHandler()
  hooks = method.hooks()

  def run_eval(step):
    results = {}
    for domain, eval_step in eval_steps.items():
      batches = data.eval_iterator(info, global_batch_size=config.eval_batch_size,
                                   source=eval_source, data_dir=data_dir,
                                   max_examples=config.get('max_eval_examples') or None, **proc)
      res = clean.evaluate(eval_step, state.params, state.batch_stats, batches, mesh)
      prefix = '' if domain == models.MAIN else f'{domain}_'
      results.update({f'{prefix}{k}': v for k, v in res.items() if k != 'count'})
    log.write(step, 'eval', results)
    logging.info('eval @ step %d: %s', step,
                 ', '.join(f'{k}={v:.4f}' for k, v in results.items()))
    return results

  def check_finite(pending):
    for s, m in pending:
      if float(m['finite']) < 1.0:
        bad = [k for k, v in m.items() if k != 'finite' and not np.all(np.isfinite(v))]
        raise NonFiniteError(
            f'Non-finite {", ".join(bad) or "metric"} at step {s + 1} (update {s}); stopping. '
            f'The last good checkpoint in {ckpt.directory} (steps {ckpt.all_steps()}) is intact. '
            'Lower the learning rate, or set config.nonfinite="skip" to skip such updates.')

  log_every = max(1, config.get('log_every_steps', 50))
  ckpt_every = config.get('checkpoint_every_steps', 0) or steps_per_epoch
  eval_every = int(config.get('eval_every_epochs', 1) * steps_per_epoch) or total_steps
  batches = data.train_iterator(info, global_batch_size=config.batch_size, seed=config.seed,
                                start_step=start_step, source=train_source, data_dir=data_dir,
                                **proc)
  pending, window_start, window_step = [], time.time(), start_step
  skipped = 0
  eval_results = {}
  stopped_by = None
  step = start_step
  try:
    for step in range(start_step, total_steps):
      state, metrics = train_step(state, parallel.shard_batch(next(batches), mesh))
      pending.append((step, metrics))
      done = step + 1
      for hook in hooks:
        if done % hook.every_steps == 0:
          state = hook.fn(state)
      at_log = done % log_every == 0 or done == total_steps
      at_ckpt = done % ckpt_every == 0
      stop = preemption.should_stop()
      if at_log or at_ckpt or stop:
        pending = [(s, parallel.to_host(m)) for s, m in pending]
        if config.get('nonfinite', 'stop') == 'stop':
          check_finite(pending)
        skipped += sum(1 for _, m in pending if float(m['finite']) < 1.0)
        means = {k: float(np.mean([m[k] for _, m in pending])) for k in pending[-1][1]
                 if k != 'finite'}
        elapsed = time.time() - window_start
        rate = (done - window_step) * config.batch_size / max(elapsed, 1e-9)
        means.update(images_per_sec=rate, learning_rate=float(
            optim.learning_rate_schedule(config, steps_per_epoch)(step)), skipped_updates=skipped)
        log.write(done, 'train', means)
        eta = (total_steps - done) * config.batch_size / max(rate, 1e-9)
        logging.info('step %d/%d (epoch %.2f) | loss %.4f | %.0f img/s | ETA %s', done,
                     total_steps, done / steps_per_epoch, means.get('loss', float('nan')), rate,
                     _format_eta(eta))
        pending, window_start, window_step = [], time.time(), done
      if done % eval_every == 0 and done != total_steps:
        eval_results = run_eval(done)
      if at_ckpt or stop:
        ckpt.save(done, state)
      if stop:
        stopped_by = preemption.signal_name
        logging.warning('Received %s: saved the checkpoint at step %d; exiting. Run the same '
                        'command again to resume.', stopped_by, done)
        break
    else:
      done = total_steps
    if stopped_by is None:
      if done != start_step or not ckpt.all_steps():
        ckpt.save(done, state)
      eval_results = run_eval(done)
  finally:
    ckpt.close()
    log.close()
    preemption.restore_handlers()

  results = {'step': int(done), 'stopped_by': stopped_by, 'skipped_updates': skipped,
             'wall_time_s': time.time() - start_time,
             **{f'eval_{k}': v for k, v in eval_results.items()}}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(results, f, indent=2)
  return state, results


def _init_from(path: str, state: TrainState) -> TrainState:
  """Starts from another run's params and BN statistics (not its optimizer or extras)."""
  directory = path if os.path.basename(os.path.normpath(path)) == 'checkpoints' else os.path.join(
      path, 'checkpoints')
  if not os.path.isdir(directory):
    raise ValueError(f'init_from={path!r}: no checkpoints directory at {directory}.')
  mgr = checkpointing.ocp.CheckpointManager(directory)
  step = mgr.latest_step()
  if step is None:
    raise ValueError(f'init_from={path!r}: no checkpoint found in {directory}.')
  raw = mgr.restore(step, args=checkpointing.ocp.args.StandardRestore())
  mgr.close()
  params = _merge(state.params, raw['params'], 'params')
  stats = dict(state.batch_stats)
  for domain in stats:  # every domain starts from the source run's main statistics
    src = raw['batch_stats'].get(domain, raw['batch_stats'][models.MAIN])
    stats[domain] = _merge(state.batch_stats[domain], src, f'batch_stats/{domain}')
  logging.info('Initialised params and BN statistics from %s (step %d).', directory, step)
  return state.replace(params=params, batch_stats=stats)


def _merge(target, source, what):
  """Copies ``source`` leaves into ``target``'s structure/sharding; missing ones keep target's."""
  flat_src = {jax.tree_util.keystr(p): v for p, v in
              jax.tree_util.tree_flatten_with_path(source)[0]}

  def pick(path, t):
    key = jax.tree_util.keystr(path)
    if key not in flat_src:
      # per-domain affine parameters a plain backbone lacks start from the shared ones
      return t
    v = np.asarray(flat_src[key])
    if v.shape != t.shape:
      raise ValueError(f'init_from: {what}{key} has shape {v.shape}, this model needs {t.shape}.')
    return jax.device_put(v.astype(t.dtype), t.sharding)
  return jax.tree_util.tree_map_with_path(pick, target)
