r"""EWS subnet analysis (Guo et al. 2022): subnet confidence (Figure 1), block vulnerability (Fig. 7).

* :func:`evaluate_subnets` runs N subnets (a mask pytree with a leading [N] axis, see
  :mod:`jaxrobust.models.subnets`) over an evaluation set, optionally on perturbed images
  (corrupted, or PGD examples of the *full* network), and returns per subnet the mean
  true-class confidence (softmax probability of the label) and the accuracy, next to the full
  network's (the "stars" of Figure 1).
* :func:`confidence_distribution` does this for N random subnets of width ``rho`` (or given
  subnets, e.g. the EWS controller's) under several perturbations: the data of Figure 1's box
  plots (``jaxrobust.evaluation.plots.plot_boxplots``).
* :func:`block_vulnerability`: accuracy of the network when only one block is reduced, either
  by dropping its residual branch (``mode='drop_residual'``) or by random rho-subnets of that
  block alone, averaged over samples (``mode='random'``, Figure 7), for every block.

**BatchNorm.** Subnets are evaluated with ``bn='batch'`` by default: each subnet normalises with
the batch statistics of its own activations (as EWS trains subnets; the full network's running
statistics do not describe a subnet's activations), taken over the whole evaluation batch across
devices, so results do not depend on the device count. Use large evaluation batches (e.g. 500),
and note that in this mode a padded final batch is skipped (its padding would enter the
statistics); :func:`analyse_run` picks the batch size near the configured one whose full
batches cover the most of the examples asked for (:func:`unpadded_batch_size`).
``bn='running'`` uses the ``'main'`` running statistics. The full network is evaluated with its
running statistics (as deployed, the stars of the figure) and, under ``bn='batch'``, also with
the batch statistics the subnets use (``full_batch_accuracy``): on corrupted images batch
statistics adapt to the shift, so that is the like-for-like reference for the subnets.
Perturbations never change statistics; PGD runs on the full network in eval mode.

Command line (restores trained runs from their workdirs; writes JSON and a box plot)::

    python -m jaxrobust.evaluation.subnet_analysis --workdirs=/tmp/vanilla,/tmp/ews \
      --labels=vanilla,ews --out=/tmp/subnets --num_subnets=100 --rho=0.5 \
      --corruption=gaussian_noise:3 --attack=pgd20 --max_examples=2000

Runs that trained an EWS controller also report the controller's subnets next to random ones.
"""

from __future__ import annotations

import collections
import functools
import json
import os
from typing import Any, Callable, Iterable, Mapping, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxrobust import attacks, parallel
from jaxrobust.models import MAIN, apply_model

BN_MODES = ('batch', 'running')
VULNERABILITY_MODES = ('drop_residual', 'random')
# perturbation(params, batch_stats, x, y, rng) -> x' (pure, jittable, per device)
Perturbation = Callable[[Any, dict, jax.Array, jax.Array, jax.Array], jax.Array]


def _check(key, value, allowed):
  if value not in allowed:
    raise ValueError(f'Unknown {key} {value!r}; allowed values: {tuple(allowed)}.')


# ------------------------------------------------------------------------------- perturbations


def pgd_perturbation(model, preset: str = 'pgd20') -> Perturbation:
  """PGD examples of the full network (eval-mode BN, running statistics; nothing updated).

  Args:
    model: the backbone.
    preset: an attack preset of :mod:`jaxrobust.attacks.presets` (default PGD-20, eps 8/255).
  """
  attack = attacks.presets.build(preset)

  def perturb(params, batch_stats, x, y, rng):
    def logits_fn(z):
      return apply_model(model, params, batch_stats, z, train=False, domain=MAIN)[0]
    return attack(logits_fn, x, y, rng)
  return perturb


def corruption_perturbation(name: str, severity: int) -> Perturbation:
  """A common corruption (``jaxrobust.corruptions``) at one severity."""
  from jaxrobust import corruptions  # pylint: disable=g-import-not-at-top
  corruptions.get(name)  # ValueError for unknown names
  if severity not in corruptions.SEVERITIES:
    raise ValueError(f'Unknown severity {severity!r}; allowed values: {corruptions.SEVERITIES}.')

  def perturb(params, batch_stats, x, y, rng):
    del params, batch_stats, y
    return corruptions.corrupt(x, name, severity, rng)
  return perturb


# ------------------------------------------------------------------------------- evaluation


def unpadded_batch_size(limit: int, num_examples: int, devices: int) -> int:
  """A batch size for ``bn='batch'``: a multiple of ``devices`` between half of ``limit`` and
  ``limit`` whose full batches cover the most of ``num_examples`` (the larger on a tie).

  Padded batches are skipped under batch statistics, and the statistics want large batches:
  1,000 examples in batches of 512 evaluated only 512; here batches of 496 evaluate 992, and a
  count with a divisor in range (e.g. 500 for 1,000 on 1 device) evaluates every example.
  """
  limit = max(devices, limit // devices * devices)
  examples = max(devices, num_examples // devices * devices)
  top = min(limit, examples)
  lowest = max(devices, top // 2 // devices * devices)
  return max(range(top, lowest - 1, -devices), key=lambda b: (examples // b * b, b))


def true_class_confidence(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """``softmax(logits)[i, labels[i]]`` per example."""
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(probs, labels[:, None], axis=-1)[:, 0]


def _sums(logits, labels, weights):
  conf = true_class_confidence(logits, labels)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return jnp.sum(conf * weights), jnp.sum(correct * weights)


@functools.lru_cache(maxsize=32)
def _steps(model, mesh, bn: str, perturbation: Optional[Perturbation]):
  """Jitted per-device bodies: perturb a batch; full-network sums; sums of a chunk of subnets."""
  batch_spec = P(parallel.AXIS)
  if bn == 'batch' and getattr(model, 'bn_axis_name', '') is None:
    # Statistics over the whole evaluation batch, not each device's share of it: the numbers
    # then do not depend on how many devices the analysis runs on.
    model = model.clone(bn_axis_name=parallel.AXIS)

  def perturb(params, batch_stats, x, y, rng):
    rng = jax.random.fold_in(rng, jax.lax.axis_index(parallel.AXIS))
    return perturbation(params, batch_stats, x, y, rng)

  def full(params, batch_stats, x, y, w):
    logits, _ = apply_model(model, params, batch_stats, x, train=False, domain=MAIN)
    conf, correct = _sums(logits, y, w)
    sums = {'confidence': conf, 'correct': correct, 'count': jnp.sum(w)}
    if bn == 'batch':  # the full network under the subnets' statistics too, for a like comparison
      logits, _ = apply_model(model, params, batch_stats, x, train=True, domain=MAIN,
                              update_stats=False, dropout=False)
      sums['confidence_batch'], sums['correct_batch'] = _sums(logits, y, w)
    return jax.lax.psum(sums, parallel.AXIS)

  def subnets(params, batch_stats, x, y, w, masks):
    def one(m):
      logits, _ = apply_model(model, params, batch_stats, x, train=bn == 'batch', domain=MAIN,
                              update_stats=False, subnet=m, dropout=False)
      return _sums(logits, y, w)
    conf, correct = jax.lax.map(one, masks)
    return jax.lax.psum({'confidence': conf, 'correct': correct}, parallel.AXIS)

  mesh_args = dict(mesh=mesh)
  return {
      'perturb': None if perturbation is None else parallel.spmd(
          perturb, in_specs=(P(), P(), batch_spec, batch_spec, P()), out_specs=batch_spec,
          **mesh_args),
      'full': parallel.spmd(full, in_specs=(P(), P(), batch_spec, batch_spec, batch_spec),
                            out_specs=P(), **mesh_args),
      'subnets': parallel.spmd(subnets, in_specs=(P(), P(), batch_spec, batch_spec, batch_spec,
                                                  P()), out_specs=P(), **mesh_args),
  }


def _num(masks) -> int:
  return int(jax.tree.leaves(masks)[0].shape[0])


def _chunks(masks, size: int):
  """Fixed-size chunks of a mask batch (the last padded by repetition): one compilation."""
  n = _num(masks)
  for start in range(0, n, size):
    idx = np.minimum(np.arange(start, start + size), n - 1)
    yield start, min(size, n - start), jax.tree.map(lambda a: a[idx], masks)


def evaluate_subnets(model, params, batch_stats: dict, batches: Iterable[dict], mesh, masks, *,
                     perturbation: Optional[Perturbation] = None, bn: str = 'batch',
                     rng: Optional[jax.Array] = None, chunk_size: int = 10) -> dict:
  """Mean true-class confidence and accuracy of N subnets and of the full network.

  Args:
    model, params, batch_stats: the backbone and its (replicated) state.
    batches: host batches ``{'image', 'label', 'mask'}`` (e.g. ``data.eval_iterator``).
    mesh: the device mesh.
    masks: subnets with a leading [N] axis.
    perturbation: applied to every batch first (None = clean images).
    bn: ``'batch'`` or ``'running'`` statistics for the subnets (module docstring).
    rng: key of the perturbation's randomness.
    chunk_size: subnets per compiled call.

  Returns:
    ``{'confidence': [N], 'accuracy': [N], 'full_confidence', 'full_accuracy', 'count'}``, and
    with ``bn='batch'`` ``'full_batch_confidence', 'full_batch_accuracy'`` (the full network
    under batch statistics).

  Raises:
    ValueError: nothing was evaluated (with ``bn='batch'``, padded batches are skipped, with a
      warning, because their padding would enter the batch statistics).
  """
  _check('bn', bn, BN_MODES)
  steps = _steps(model, mesh, bn, perturbation)
  rng = jax.random.key(0) if rng is None else rng
  n = _num(masks)
  conf, correct = np.zeros(n), np.zeros(n)
  full = collections.defaultdict(float)
  skipped = 0
  for i, batch in enumerate(batches):
    mask = np.asarray(batch.get('mask', np.ones(len(batch['label']), np.float32)))
    if bn == 'batch' and mask.min() < 1:
      skipped += int(mask.sum())  # padding would enter the subnets' batch statistics
      continue
    b = parallel.shard_batch({'image': batch['image'], 'label': batch['label'], 'mask': mask},
                             mesh)
    x = b['image']
    if steps['perturb'] is not None:
      x = steps['perturb'](params, batch_stats, x, b['label'], jax.random.fold_in(rng, i))
    for k, v in parallel.to_host(steps['full'](params, batch_stats, x, b['label'],
                                               b['mask'])).items():
      full[k] += float(v)
    for start, size, chunk in _chunks(masks, chunk_size):
      s = parallel.to_host(steps['subnets'](params, batch_stats, x, b['label'], b['mask'], chunk))
      conf[start:start + size] += s['confidence'][:size]
      correct[start:start + size] += s['correct'][:size]
  if skipped:
    logging.warning('Subnet evaluation with bn=batch skipped %d examples in padded batches '
                    '(batch statistics must not see padding).', skipped)
  if full['count'] == 0:
    raise ValueError(
        'No examples were evaluated: ' + (
            f"with bn='batch' every batch was padded ({skipped} examples); use an example count "
            "that fills at least one evaluation batch, or bn='running'." if skipped else
            'the batches were empty.'))
  count = full['count']
  out = {'confidence': conf / count, 'accuracy': correct / count,
         'full_confidence': full['confidence'] / count, 'full_accuracy': full['correct'] / count,
         'count': int(full['count'])}
  if bn == 'batch':
    out.update(full_batch_confidence=full['confidence_batch'] / count,
               full_batch_accuracy=full['correct_batch'] / count)
  return out


def confidence_distribution(model, params, batch_stats: dict, make_batches: Callable[[], Iterable],
                            mesh, *, space, num_subnets: int = 1000, rng: jax.Array,
                            perturbations: Optional[Mapping[str, Optional[Perturbation]]] = None,
                            masks=None, bn: str = 'batch', chunk_size: int = 10) -> dict:
  """Figure 1's data: per-subnet confidence/accuracy of random (or given) subnets per condition.

  Args:
    make_batches: returns a fresh iterator of evaluation batches (called per condition).
    space: the :class:`~jaxrobust.models.subnets.SubnetSpace` (its ``rho``: 0.7 in Figure 1).
    num_subnets: random subnets to draw when ``masks`` is None (1,000 in Figure 1).
    rng: key for the subnets and the perturbations.
    perturbations: ``condition -> perturbation`` (None = clean); default ``{'clean': None}``.
    masks: explicit subnets (leading [N] axis), e.g. sampled from an EWS controller.

  Returns:
    ``{condition: evaluate_subnets(...) result}``, each with the same subnets.
  """
  k_masks, k_data = jax.random.split(rng)
  if masks is None:
    masks = jax.jit(space.random_batch, static_argnums=1)(k_masks, num_subnets)
  perturbations = {'clean': None} if perturbations is None else dict(perturbations)
  return {name: evaluate_subnets(model, params, batch_stats, make_batches(), mesh, masks,
                                 perturbation=p, bn=bn, rng=jax.random.fold_in(k_data, i),
                                 chunk_size=chunk_size)
          for i, (name, p) in enumerate(perturbations.items())}


def block_vulnerability(model, params, batch_stats: dict, make_batches: Callable[[], Iterable],
                        mesh, *, space, mode: str = 'drop_residual', num_samples: int = 100,
                        rng: Optional[jax.Array] = None,
                        perturbation: Optional[Perturbation] = None, bn: str = 'batch',
                        chunk_size: int = 10) -> dict:
  """Figure 7's data: accuracy with only one block reduced, for every block.

  Args:
    mode: ``'drop_residual'`` (the block's residual branch removed, its shortcut kept) or
      ``'random'`` (``num_samples`` random rho-subnets of that block alone, as Figure 7).
    Other arguments as in :func:`evaluate_subnets`.

  Returns:
    ``{'blocks': [names], 'accuracy': [per block], 'confidence': [per block],
    'full_accuracy': float}``; for ``'random'`` the per-block values are means over samples.
  """
  _check('mode', mode, VULNERABILITY_MODES)
  names = list(space.block_names())
  rng = jax.random.key(0) if rng is None else rng
  if mode == 'drop_residual':
    masks = jax.tree.map(lambda *a: jnp.stack(a), *[space.drop_residual(b) for b in names])
    per = 1
  else:
    if num_samples < 1:
      raise ValueError(f'num_samples must be >= 1, got {num_samples}.')
    sample = jax.jit(space.random_in_block, static_argnums=1)
    masks = jax.tree.map(lambda *a: jnp.stack(a), *[
        sample(jax.random.fold_in(jax.random.fold_in(rng, i), s), b)
        for i, b in enumerate(names) for s in range(num_samples)])
    per = num_samples
  res = evaluate_subnets(model, params, batch_stats, make_batches(), mesh, masks,
                         perturbation=perturbation, bn=bn, rng=rng, chunk_size=chunk_size)
  return {'blocks': names,
          'accuracy': res['accuracy'].reshape(len(names), per).mean(1).tolist(),
          'confidence': res['confidence'].reshape(len(names), per).mean(1).tolist(),
          'full_accuracy': res['full_accuracy']}


def summarize(result: Mapping[str, Any]) -> dict:
  """Mean / median / quartiles of subnet accuracy and confidence, and the full network's."""
  out = {key: float(result[key]) for key in ('full_accuracy', 'full_confidence',
                                             'full_batch_accuracy', 'full_batch_confidence')
         if key in result}
  out['count'] = int(result['count'])
  for key in ('accuracy', 'confidence'):
    v = np.asarray(result[key])
    out.update({f'subnet_{key}_mean': float(v.mean()), f'subnet_{key}_median': float(np.median(v)),
                f'subnet_{key}_q25': float(np.quantile(v, 0.25)),
                f'subnet_{key}_q75': float(np.quantile(v, 0.75))})
  return out


# ------------------------------------------------------------------------------- command line


def analyse_run(workdir: str, *, num_subnets: int, rho: float, corruption: str = '',
                attack: str = '', max_examples: int = 0, bn: str = 'batch', seed: int = 0,
                vulnerability: bool = False, vulnerability_mode: str = 'random',
                overrides: Optional[dict] = None) -> dict:
  """Figure 1 (and optionally Figure 7) data of one trained run (see the module docstring).

  Random subnets have width ``rho``; an EWS run's controller samples subnets of its own width
  (``ews_rho``), reported as ``controller_rho`` (a warning says when the two differ).
  ``overrides`` changes config keys of the run, as for :func:`runner.load_run` (e.g. its
  ``dataset`` where the one it was trained on is not at hand).
  """
  from jaxrobust import data  # pylint: disable=g-import-not-at-top
  from jaxrobust.models import controller as controller_lib  # pylint: disable=g-import-not-at-top
  from jaxrobust.models import subnets  # pylint: disable=g-import-not-at-top
  from jaxrobust.evaluation import runner  # pylint: disable=g-import-not-at-top
  run = runner.load_run(workdir, with_method=True, overrides=overrides)
  config, info, method, model, mesh = run.config, run.info, run.method, run.model, run.mesh
  space = subnets.subnet_space(model, rho, image_shape=tuple(info.image_shape))
  batch_size = parallel.eval_batch_size(config.eval_batch_size, mesh)
  if bn == 'batch' and max_examples:
    # Batch statistics must not see padding, so padded batches are skipped: batches that divide
    # the examples asked for (rounded down to a multiple of the devices) leave none padded, where
    # e.g. 1000 examples in batches of 512 evaluated only the first 512.
    batch_size = unpadded_batch_size(batch_size, max_examples, mesh.devices.size)

  def make_batches():
    return data.eval_iterator(info, global_batch_size=batch_size,
                              source=run.eval_source,
                              data_dir=config.get('data_dir') or None,
                              max_examples=max_examples or None)

  perturbations = {'clean': None}
  if corruption:
    name, _, severity = corruption.partition(':')
    perturbations[f'{name}_{severity or 3}'] = corruption_perturbation(name, int(severity or 3))
  if attack:
    perturbations[attack] = pgd_perturbation(model, attack)
  rng = jax.random.key(seed)
  kinds = {'random': None}
  if 'controller' in run.extras:
    cparams = run.extras['controller']['params']
    sample = jax.jit(controller_lib.sample_subnets, static_argnums=(0, 3))(
        method.controller, cparams, jax.random.fold_in(rng, 1), num_subnets)
    kinds['controller'] = method.space.from_slot_masks(sample.masks)
  out = {'workdir': workdir, 'method': config.method, 'rho': rho, 'bn': bn, 'subnets': {}}
  if 'controller' in kinds:
    out['controller_rho'] = method.rho
    if method.rho != rho:
      logging.warning('%s: the controller samples rho=%s subnets, the random ones have rho=%s; '
                      'their accuracies are not comparable.', workdir, method.rho, rho)
  for kind, masks in kinds.items():
    res = confidence_distribution(model, run.params, run.batch_stats, make_batches, mesh,
                                  space=space, num_subnets=num_subnets, rng=rng,
                                  perturbations=perturbations, masks=masks, bn=bn)
    out['subnets'][kind] = {cond: {**summarize(r), 'confidence': r['confidence'].tolist(),
                                   'accuracy': r['accuracy'].tolist()}
                            for cond, r in res.items()}
  if vulnerability:
    out['vulnerability'] = block_vulnerability(model, run.params, run.batch_stats,
                                               make_batches, mesh, space=space, bn=bn,
                                               mode=vulnerability_mode)
  return out


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  from jaxrobust import files  # pylint: disable=g-import-not-at-top
  from jaxrobust.evaluation import plots  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  workdirs = [w for w in f.workdirs.split(',') if w]
  labels = [l for l in f.labels.split(',') if l] or [os.path.basename(os.path.normpath(w))
                                                     for w in workdirs]
  if len(labels) != len(workdirs):
    raise ValueError(f'--labels has {len(labels)} entries for {len(workdirs)} workdirs.')
  out = files.as_path(f.out)
  out.mkdir(parents=True, exist_ok=True)
  results, boxes = {}, {}
  for label, workdir in zip(labels, workdirs):
    res = analyse_run(workdir, num_subnets=f.num_subnets, rho=f.rho, corruption=f.corruption,
                      attack=f.attack, max_examples=f.max_examples, bn=f.bn, seed=f.seed,
                      vulnerability=f.vulnerability, vulnerability_mode=f.vulnerability_mode)
    results[label] = res
    for kind, conds in res['subnets'].items():
      for cond, r in conds.items():
        boxes[f'{label} {kind} {cond}' if kind != 'random' else f'{label} {cond}'] = r['confidence']
        logging.info('%s %s %s: subnet accuracy mean %.4f (median %.4f), confidence mean %.4f; '
                     'full network accuracy %.4f', label, kind, cond,
                     r['subnet_accuracy_mean'], r['subnet_accuracy_median'],
                     r['subnet_confidence_mean'], r['full_accuracy'])
  (out / 'subnet_analysis.json').write_text(json.dumps(results, indent=1))
  plots.plot_boxplots(boxes, out / 'subnet_confidence.png',
                      title=f'True-class confidence of rho={f.rho} subnets',
                      ylabel='mean true-class confidence')
  print(json.dumps({label: {kind: {cond: {k: v for k, v in r.items()
                                          if k not in ('confidence', 'accuracy')}
                                   for cond, r in conds.items()}
                            for kind, conds in res['subnets'].items()}
                    for label, res in results.items()}, indent=1))


if __name__ == '__main__':
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('workdirs', None, 'Comma-separated run workdirs.', required=True)
  flags.DEFINE_string('labels', '', 'Comma-separated labels (default: workdir names).')
  flags.DEFINE_string('out', None, 'Output directory (JSON + PNG).', required=True)
  flags.DEFINE_integer('num_subnets', 100, 'Random subnets per run (1,000 in Figure 1).')
  flags.DEFINE_float('rho', 0.5, 'Subnet width of the random subnets.')
  flags.DEFINE_string('corruption', '', 'name:severity, e.g. gaussian_noise:3 (empty = none).')
  flags.DEFINE_string('attack', '', 'Attack preset for PGD images, e.g. pgd20 (empty = none).')
  flags.DEFINE_integer('max_examples', 0, 'Evaluation examples (0 = the whole split).')
  flags.DEFINE_enum('bn', 'batch', list(BN_MODES), 'BatchNorm statistics of the subnets.')
  flags.DEFINE_integer('seed', 0, 'Seed of the subnets and perturbations.')
  flags.DEFINE_bool('vulnerability', False, 'Also compute per-block vulnerability.')
  flags.DEFINE_enum('vulnerability_mode', 'random', list(VULNERABILITY_MODES),
                    "Per-block reduction: 'random' rho-subnets of the block (Figure 7) or "
                    "'drop_residual' (its residual branch removed).")
  jax.config.config_with_absl()
  app.run(main)
