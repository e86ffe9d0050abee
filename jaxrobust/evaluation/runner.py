"""Evaluation suites over a trained run: clean, corruptions, attacks, epsilon*, frequency.

Library use (e.g. from Colab)::

    from jaxrobust.evaluation import runner
    run = runner.load_run('/tmp/vanilla_small')
    report = runner.run_suites(run, ['clean', 'corruptions', 'pgd'], out_dir='/tmp/report')

Command line: ``python -m jaxrobust.evaluate --workdir=... --suite=clean,corruptions,pgd``.

Every suite runs on all devices (global arrays sharded over the batch; jitted functions are
partitioned by XLA), evaluates the model in eval mode with the BN domain ``run.domain`` and
never changes any statistics. Corrupted and adversarial images are made on device.
"""

import dataclasses
import functools
import io
import json
import time
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from jaxrobust import (attacks, checkpointing, config_keys, corruptions, data, files, models,
                       parallel)
from jaxrobust.attacks import validation
from jaxrobust.evaluation import clean, frequency, metrics, noise_robustness, plots

SUITES = ('clean', 'corruptions', 'tfds_corruptions', 'pgd', 'apgd', 'eps_star', 'frequency')

# Attacks of the 'pgd' suite (L-inf, 8/255 unless the name says otherwise), weakest first.
# madry_pgd10: PGD-10 from a random start; advprop_pgd1: one 1/255 step from a random start (the
# weak attacker AdvProp trains small nets with, the PGD-1 of its acceptance comparison).
PGD_SUITE = ('fgsm', 'ifgsm10', 'madry_pgd10', 'pgd20', 'advprop_pgd1')
# Accuracy-vs-eps curve: PGD-10 (step eps/4) at these radii; 8/255 comes from PGD-20 above.
EPS_CURVE = (1 / 255, 2 / 255, 4 / 255)


def _eval_logits(model, domain: str, params, batch_stats: dict, x):
  """Eval-mode logits on ``domain``'s BatchNorm (running statistics untouched)."""
  out, _ = models.apply_model(model, params, batch_stats, x, train=False, domain=domain)
  return out


@functools.lru_cache(maxsize=None)
def _eval_logits_of(model, domain: str):
  """``_eval_logits`` bound to a model and domain, one object per pair.

  A ``Partial``'s function is part of a jitted function's cache key (compared by identity for a
  ``functools.partial``): a new one per call would recompile every suite's program per call.
  """
  return functools.partial(_eval_logits, model, domain)


@dataclasses.dataclass
class Run:
  """A restored run: what every suite needs."""
  config: Any
  info: Any
  model: Any
  mesh: Any
  params: Any
  batch_stats: dict
  step: int
  domain: str = models.MAIN
  workdir: str = ''
  eval_source: Any = None
  method: Any = None   # set up, with ``extras`` (host arrays), when loaded ``with_method``
  extras: Any = None

  def logits_fn(self, x):
    """Pure eval-mode logits on ``self.domain``'s BatchNorm (running statistics untouched)."""
    return _eval_logits(self.model, self.domain, self.params, self.batch_stats, x)

  def predict_fn(self) -> jax.tree_util.Partial:
    """:meth:`logits_fn` as a ``Partial`` whose leaves are the weights.

    Every jitted suite takes it as an argument, so the weights are inputs of the compiled
    program: a function that closed over ``self.params`` would embed them as constants (slow
    compiles, huge programs for big models).
    """
    return jax.tree_util.Partial(_eval_logits_of(self.model, self.domain), self.params,
                                 self.batch_stats)

  def host_batches(self, global_batch_size: int, max_examples: Optional[int] = None,
                   info=None):
    """This process's part of each eval batch (numpy), of ``info``'s eval split (default the run's).

    Every suite reads its data here, so which slice of the split a process feeds is said once:
    without ``process_index``/``process_count`` every process would feed the whole split. The
    batch is rounded up to a multiple of the devices and processes (padding is masked).
    """
    global_batch_size = parallel.eval_batch_size(global_batch_size, self.mesh)
    return data.eval_iterator(info or self.info, global_batch_size=global_batch_size,
                              source=self.eval_source if info is None else None,
                              data_dir=self.config.get('data_dir') or None,
                              max_examples=max_examples, process_index=jax.process_index(),
                              process_count=jax.process_count())

  def batches(self, max_examples: Optional[int] = None, batch_size: Optional[int] = None):
    """Eval-split batches as global arrays: {'image', 'label', 'mask'}."""
    bs = batch_size or self.config.eval_batch_size
    if max_examples:  # no padding beyond the examples asked for
      bs = min(bs, max_examples)
    for b in self.host_batches(bs, max_examples):
      yield parallel.shard_batch(b, self.mesh)


def load_run(workdir: str, *, overrides: Optional[dict] = None, domain: str = models.MAIN,
             mesh=None, with_method: bool = False) -> Run:
  """Restores the newest checkpoint of ``workdir`` with the config it was trained with.

  Args:
    workdir: a training workdir (holds config.json and checkpoints/).
    overrides: config keys to change, e.g. ``{'dataset': 'folder:/data/cifar10'}``.
    domain: BN domain to evaluate with (``'aux'`` for MixProp/AdvProp's auxiliary BN).
    mesh: device mesh (default: every device).
    with_method: also set up the run's method and read its extras (EWS's controller, ANT's
      generators, ...) as host arrays, for analyses that need them.
  """
  from jaxrobust import train  # pylint: disable=g-import-not-at-top
  from jaxrobust.methods.base import Context  # pylint: disable=g-import-not-at-top
  path = files.as_path(workdir) / 'config.json'
  if not path.exists():
    raise ValueError(f'{workdir!r} is not a training workdir: no config.json.')
  config = ml_collections.ConfigDict(json.loads(path.read_text()))
  retired = config_keys.unknown(config)
  if retired:  # saved by a version that read them; this one would refuse the run for them
    logging.warning('%s: ignoring config keys this version does not read: %s', workdir, retired)
    for key in retired:
      del config[key]
  for key, value in (overrides or {}).items():
    config[key] = value
  config.init_from = ''  # the run's own checkpoint is what gets loaded
  info, method, model, tx, mesh, steps_per_epoch = train.build(config, mesh)
  if domain not in method.bn_domains():  # before the checkpoint is read
    raise ValueError(f'Domain {domain!r} not in this run; its method {config.method!r} keeps '
                     f'{sorted(method.bn_domains())}.')
  # Only params and BN statistics, read as numpy: works whatever the saving run's device count
  # or process topology, and without rebuilding its optimizer state.
  raw, step = checkpointing.load_arrays(workdir)
  params = parallel.replicate(raw['params'], mesh)
  batch_stats = parallel.replicate(dict(raw['batch_stats']), mesh)
  if domain not in batch_stats:
    raise ValueError(f'Domain {domain!r} not in this run; it has {sorted(batch_stats)}.')
  source = data.make_source(info, info.eval_split, config.get('data_dir') or None)
  run = Run(config, info, model, mesh, params, batch_stats, int(step), domain, workdir, source)
  if with_method:
    method.setup(Context(config=config, model=model, tx=tx, info=info, mesh=mesh,
                         steps_per_epoch=steps_per_epoch,
                         total_steps=int(config.num_epochs * steps_per_epoch)))
    run.method, run.extras = method, raw.get('extras') or {}
  return run


# ----------------------------------------------------------------------------- suites


def _count(logits, y, mask):
  """(correct top-1, examples) as int32: exact, and summable on device across batches."""
  correct = jnp.sum((jnp.argmax(logits, -1) == y) * mask)
  return correct.astype(jnp.int32), jnp.sum(mask).astype(jnp.int32)


@functools.lru_cache(maxsize=None)
def _counts_fn():
  """jit: (predict_fn, x, y, mask, rng) -> :func:`_count` (``rng`` unused: the attacks' shape).

  One jitted function for every suite (the model comes in through ``predict_fn``), so suites
  after the first reuse its compiled program."""
  @jax.jit
  def fn(predict_fn, x, y, mask, rng):
    del rng
    return _count(predict_fn(x), y, mask)
  return fn


def _accuracy(run: Run, fn, batches, rng, **traced) -> float:
  """Top-1 accuracy from ``fn``'s counts (``traced``: its keyword inputs, e.g. eps).

  The counts are summed on device and fetched once: a fetch per batch would make the host wait
  for every batch before dispatching the next.
  """
  predict_fn = run.predict_fn()
  correct = total = 0
  for i, b in enumerate(batches):
    c, n = fn(predict_fn, b['image'], b['label'], b['mask'], jax.random.fold_in(rng, i),
              **traced)
    correct, total = correct + c, total + n
  return int(correct) / max(int(total), 1)


def clean_suite(run: Run, max_examples=None) -> dict:
  step = clean.make_eval_step(run.model, run.mesh, (run.domain,))
  host = run.host_batches(run.config.eval_batch_size, max_examples)
  return clean.evaluate(step, run.params, run.batch_stats, host, run.mesh)[run.domain]


@functools.lru_cache(maxsize=None)
def jitted_corruption(name: str, severity: int):
  """``corruptions.corrupt`` of one corruption and severity, jitted once per process.

  ``f(images, rng=key)``; every suite and analysis that corrupts on device takes it from here
  (a fresh ``partial`` per call would be a new jit cache key and compile again).
  """
  return jax.jit(functools.partial(corruptions.corrupt, name=name, severity=severity))


def corruption_suite(run: Run, names: Sequence[str] = corruptions.ALL,
                     severities: Sequence[int] = (1, 2, 3, 4, 5), max_examples=None,
                     seed: int = 0) -> dict:
  """Top-1 error for every corruption x severity, corrupting the eval split on device.

  One pass over the split: each batch is sent to the devices once and every corruption x
  severity is scored on it there, so the split is read once and only one batch of it is held on
  device (the whole ImageNet validation set in float32 would be 30 GB). Batch ``i`` is corrupted
  with ``fold_in(PRNGKey(seed), i)`` whatever the corruption.

  Returns: ``{'errors': {name: {severity: error}}}``.
  """
  for name in names:
    corruptions.get(name)  # ValueError listing valid names
  model_fn, predict_fn = _counts_fn(), run.predict_fn()
  corrupt_fns = {(name, s): jitted_corruption(name, s) for name in names for s in severities}
  counts = dict.fromkeys(corrupt_fns, (0, 0))  # summed on device, fetched once at the end
  rng = jax.random.PRNGKey(seed)
  for i, b in enumerate(run.batches(max_examples)):
    batch_rng = jax.random.fold_in(rng, i)
    for key, corrupt in corrupt_fns.items():
      c, n = model_fn(predict_fn, corrupt(b['image'], rng=batch_rng), b['label'], b['mask'],
                      batch_rng)
      counts[key] = (counts[key][0] + c, counts[key][1] + n)
  errors = {name: {s: 1.0 - int(counts[name, s][0]) / max(int(counts[name, s][1]), 1)
                   for s in severities} for name in names}
  for name in names:
    logging.info('corruption %s: errors %s', name,
                 ' '.join(f'{errors[name][s]:.3f}' for s in severities))
  return {'errors': errors}


# TFDS names two of CIFAR-10-C's corruptions differently from ImageNet-C and from this library.
TFDS_CIFAR10_CORRUPTED_NAMES = {'glass_blur': 'frosted_glass_blur', 'elastic_transform': 'elastic'}


# The official corrupted copy of each dataset that has one in TFDS.
TFDS_CORRUPTED = {'cifar10': 'cifar10_corrupted', 'imagenet2012': 'imagenet2012_corrupted'}
_CORRUPTED_CLASSES = {'cifar10_corrupted': 10, 'imagenet2012_corrupted': 1000}


def corrupted_dataset(run_dataset: str, dataset: Optional[str] = None,
                      num_classes: Optional[int] = None) -> str:
  """The TFDS corrupted set to score a run on: ``dataset`` if given, else its dataset's own.

  Args:
    run_dataset: the run's ``config.dataset`` (e.g. ``'cifar10'``, ``'folder:/data/cifar10'``).
    dataset: an explicit choice, one of ``TFDS_CORRUPTED``'s values (for a run trained on a
      copy of CIFAR-10 or ImageNet, e.g. an image folder).
    num_classes: the run's class count, checked against the chosen set's (when given).

  Returns:
    The TFDS name, e.g. ``'cifar10_corrupted'``.

  Raises:
    ValueError: ``dataset`` is not an official set, or the run's dataset has none and no
      ``dataset`` was given (a model scored on another dataset's images would be meaningless).
  """
  allowed = ', '.join(TFDS_CORRUPTED.values())
  if dataset:
    if dataset not in TFDS_CORRUPTED.values():
      raise ValueError(f'corrupted_dataset={dataset!r}: allowed {allowed}.')
    expected = _CORRUPTED_CLASSES[dataset]
    if num_classes is not None and num_classes != expected:
      raise ValueError(f'corrupted_dataset={dataset!r} has {expected} classes; this run '
                       f'classifies {num_classes}, so its scores there would mean nothing.')
    return dataset
  base = '' if run_dataset.startswith('folder:') else run_dataset.split(':')[0].split('/')[0]
  if base not in TFDS_CORRUPTED:
    raise ValueError(f'The tfds_corruptions suite has official sets for '
                     f'{", ".join(TFDS_CORRUPTED)} only; this run trained on {run_dataset!r}. '
                     f'If its images are one of those datasets\' (e.g. a folder copy), name the '
                     f'set with --corrupted_dataset ({allowed}).')
  return TFDS_CORRUPTED[base]


def tfds_corruption_suite(run: Run, names: Sequence[str] = corruptions.STANDARD,
                          severities: Sequence[int] = (1, 2, 3, 4, 5), max_examples=None,
                          dataset: Optional[str] = None) -> dict:
  """The official pre-computed sets (TFDS ``cifar10_corrupted``/``imagenet2012_corrupted``).

  Each ``<dataset>/<name>_<severity>`` config is read with the same pipeline and scored with the
  same model function as the on-the-fly corruptions. ``names`` are this library's corruption
  names (``TFDS_CIFAR10_CORRUPTED_NAMES`` gives TFDS's CIFAR spelling where it differs).
  ``dataset`` defaults to the run's dataset's corrupted copy (:func:`corrupted_dataset`).
  """
  from jaxrobust import train  # pylint: disable=g-import-not-at-top
  dataset = corrupted_dataset(run.config.dataset, dataset, run.info.num_classes)
  model_fn = _counts_fn()
  errors = {}
  for name in names:
    errors[name] = {}
    tfds_name = (TFDS_CIFAR10_CORRUPTED_NAMES.get(name, name)
                 if dataset.startswith('cifar10_corrupted') else name)
    for s in severities:
      cfg = ml_collections.ConfigDict(run.config.to_dict())
      cfg.dataset, cfg.eval_split, cfg.train_split, cfg.image_size = (
          f'{dataset}/{tfds_name}_{s}', 'test' if 'cifar' in dataset else 'validation',
          'test' if 'cifar' in dataset else 'validation', run.info.image_shape[0])
      train.validate_config(cfg)
      # read at the model's input size and channel count, framed as stored: the sets are already
      # centre-cropped (ImageNet-C to 224), so ImageNet's eval crop would crop them twice
      info = dataclasses.replace(data.get_info(cfg), image_shape=run.info.image_shape,
                                 augment='none')
      host = run.host_batches(run.config.eval_batch_size, max_examples, info)
      gb = (parallel.shard_batch(b, run.mesh) for b in host)
      errors[name][s] = 1.0 - _accuracy(run, model_fn, gb, jax.random.PRNGKey(0))
  return {'errors': errors, 'dataset': dataset}


def attack_suite(run: Run, names: Sequence[str] = PGD_SUITE, max_examples: int = 500,
                 eps_curve: Sequence[float] = EPS_CURVE, seed: int = 0) -> dict:
  """Robust top-1 accuracy under attack presets, and accuracy vs eps for one attack.

  Attacks see the eval-mode model (``run.predict_fn()``), so crafting never touches statistics.
  """
  batches = list(run.batches(max_examples))
  out = {'clean': _accuracy(run, _counts_fn(), batches, jax.random.PRNGKey(seed))}

  def attacked(preset: str, **overrides):
    kwargs = {**attacks.presets.attack_kwargs(preset), **overrides}
    attack = attacks.get(attacks.presets.get(preset)['attack'])
    return _attack_counts(attack, kwargs)

  for name in names:
    out[name] = _accuracy(run, attacked(name), batches, jax.random.PRNGKey(seed))
    logging.info('attack %s: robust accuracy %.4f', name, out[name])
  # eps and step size are inputs of the one compiled curve program, not baked into one per eps;
  # traced, they are checked here rather than by the attack
  for eps in eps_curve:
    attacks.validation.check_range('eps', eps, low=0.0)
  curve_fn = attacked('pgd20', num_steps=10)
  curve = [_accuracy(run, curve_fn, batches, jax.random.PRNGKey(seed), eps=eps,
                     step_size=eps / 4) for eps in eps_curve]
  if 'pgd20' in out:
    eps_curve, curve = list(eps_curve) + [8 / 255], curve + [out['pgd20']]
  out['curve'] = {'attack': 'pgd (10 steps; 20 at 8/255)', 'eps': list(eps_curve),
                  'accuracy': curve}
  return out


def _attack_label(name: str) -> str:
  """``name``, with its eps when a preset attacks at another radius than 8/255."""
  if name not in attacks.presets.NAMES:
    return name
  eps = attacks.presets.attack_kwargs(name).get('eps', 8 / 255)
  return name if abs(eps - 8 / 255) < 1e-9 else f'{name} (eps {eps * 255:g}/255)'


def _attack_counts(attack, kwargs):
  """jit: (predict_fn, x, y, mask, rng, **traced) -> (robust, examples) counts under ``attack``.

  Robust: right on the clean image and on the attacked one (``attacks.robust_correct``).

  ``kwargs`` are fixed at trace time; keyword arguments of the call (eps, step size) override
  them as traced inputs, so a sweep over them reuses one compiled program.
  """
  @jax.jit
  def fn(predict_fn, x, y, mask, rng, **traced):
    x_adv = attack(predict_fn, x, y, rng, **{**kwargs, **traced})
    # Robust = right on the clean image and on the attacked one: an attack that happens to move
    # a misclassified image onto its label must not count it robust.
    ok = attacks.robust_correct(predict_fn, x_adv, y, x_clean=x)
    return jnp.sum(ok * mask).astype(jnp.int32), jnp.sum(mask).astype(jnp.int32)
  return fn


def apgd_suite(run: Run, max_examples: int = 500, num_steps: int = 100,
               num_target_classes: int = 3, seed: int = 0) -> dict:
  """APGD-CE and APGD-T (L-inf 8/255), reported as such (not as AutoAttack)."""
  batches = list(run.batches(max_examples))
  out = {}
  for name, kwargs in (('apgd_ce', {}), ('apgd_t', {'num_target_classes': num_target_classes})):
    fn = _attack_counts(attacks.get(name), dict(eps=8 / 255, num_steps=num_steps, **kwargs))
    out[name] = _accuracy(run, fn, batches, jax.random.PRNGKey(seed))
    logging.info('attack %s: robust accuracy %.4f', name, out[name])
  out['settings'] = {'eps': 8 / 255, 'num_steps': num_steps,
                     'apgd_t_num_target_classes': num_target_classes}
  return out


def eps_star_suite(run: Run, noises: Sequence[str] = ('gaussian', 'uniform'),
                   max_examples: int = 500, seed: int = 0) -> dict:
  """Median minimal L2 perturbation epsilon* along random noise directions."""
  out = {}
  for noise in noises:
    res = noise_robustness.median_eps_star(run.predict_fn(), run.batches(max_examples),
                                           jax.random.PRNGKey(seed), noise=noise)
    out[noise] = {k: v for k, v in res.items() if k != 'per_image'}
    logging.info('eps* (%s): %.4f', noise, res['eps_star'])
  return out


def frequency_suite(run: Run, max_examples: int = 200, stride: int = 1, seed: int = 0) -> dict:
  h = run.info.image_shape[0]
  res = frequency.fourier_heat_map(run.predict_fn(), run.batches(max_examples, batch_size=100),
                                   jax.random.PRNGKey(seed), stride=stride,
                                   norm=frequency.DEFAULT_NORMS['cifar' if h <= 64 else 'imagenet'])
  return {'map': np.asarray(res['map']).tolist(), 'clean_error': res['clean_error'],
          'norm': res['norm'], 'num_images': res['num_images']}


# ----------------------------------------------------------------------------- reports


def check_severities(severities: Sequence[int]) -> tuple[int, ...]:
  """The severities as a sorted tuple of ints; ValueError naming the allowed ones otherwise."""
  try:
    out = tuple(sorted({int(s) for s in severities if float(s) == int(s)}))
    out = out if len(out) == len(set(map(float, severities))) else ()
  except (TypeError, ValueError):
    out = ()
  if not out or any(s not in corruptions.SEVERITIES for s in out):
    raise ValueError(f'severities must be a non-empty subset of {list(corruptions.SEVERITIES)}, '
                     f'got {list(severities)!r}.')
  return out


def run_suites(run: Run, suites: Sequence[str], *, out_dir: Optional[str] = None,
               max_examples: Optional[int] = None, attack_examples: int = 500,
               corruption_names: Sequence[str] = corruptions.ALL,
               corruption_severities: Sequence[int] = corruptions.SEVERITIES,
               baseline_errors: Optional[str] = None, apgd_steps: int = 100,
               apgd_targets: int = 3, corrupted: Optional[str] = None) -> dict:
  """Runs the named suites and writes report.json, CSVs, summary.md and plots to ``out_dir``.

  Args:
    run: from :func:`load_run`.
    suites: names from SUITES.
    out_dir: where to write (default ``<workdir>/eval_<domain>``).
    max_examples: eval examples for clean/corruption suites (None = the whole split).
    attack_examples: examples for attacks, epsilon* and (at most 200) the frequency map.
    corruption_names: corruptions of the corruption suite.
    corruption_severities: their severities (e.g. ``(3,)`` for the whole test set at a
      fifth of the cost of all five).
    baseline_errors: JSON of a baseline run's corruption errors for normalised CE/mCE (CIFAR,
      as in the Auxiliary Training paper's Eq. 8); default AlexNet's ImageNet-C errors, which
      are only meaningful for ImageNet.
    apgd_steps: iterations of APGD-CE/APGD-T.
    apgd_targets: target classes of APGD-T (AutoAttack uses 9; each costs one APGD run).
    corrupted: the TFDS set of the tfds_corruptions suite (default: the run's dataset's own,
      see :func:`corrupted_dataset`).
  """
  unknown = [s for s in suites if s not in SUITES]
  if unknown:
    raise ValueError(f'Unknown suite(s) {unknown}; valid: {", ".join(SUITES)}.')
  if 'tfds_corruptions' in suites:  # before any suite runs
    corrupted = corrupted_dataset(run.config.dataset, corrupted, run.info.num_classes)
  elif corrupted:
    raise ValueError(f'corrupted_dataset={corrupted!r} is read only by the tfds_corruptions '
                     f'suite, which {list(suites)} does not include.')
  severities = check_severities(corruption_severities)
  validation.check_int('attack_examples', attack_examples, low=1)  # 0 read no data: 0% robust
  gathered = [s for s in suites if s in ('eps_star', 'frequency')]
  if gathered and jax.process_count() > 1:
    raise ValueError(f'Suite(s) {gathered} take medians/maps over per-image values on one host; '
                     f'run them in a single process (python -m jaxrobust.evaluate is one), not '
                     f'in each of {jax.process_count()}.')
  out_dir = str(out_dir or files.as_path(run.workdir) / f'eval_{run.domain}')
  files.as_path(out_dir).mkdir(parents=True, exist_ok=True)  # a bad path fails now
  report = {'workdir': run.workdir, 'step': run.step, 'domain': run.domain,
            'model': run.config.model, 'method': run.config.method, 'dataset': run.info.name,
            'image_shape': list(run.info.image_shape), 'devices': run.mesh.devices.size,
            'timings_s': {}}
  for suite in suites:
    start = time.time()
    if suite == 'clean':
      report['clean'] = clean_suite(run, max_examples)
    elif suite in ('corruptions', 'tfds_corruptions'):
      if suite == 'corruptions':
        res = corruption_suite(run, names=corruption_names, severities=severities,
                               max_examples=max_examples)
      else:
        official = [n for n in corruption_names if n in corruptions.ALL]
        res = tfds_corruption_suite(run, names=official, severities=severities,
                                    max_examples=max_examples, dataset=corrupted)
      clean_err = 1.0 - report['clean']['top1'] if 'clean' in report else None
      baseline = baseline_errors if baseline_errors else (
          'alexnet' if run.info.image_shape[0] > 64 else None)
      res['summary'] = metrics.corruption_summary(
          {k: v for k, v in res['errors'].items() if k in corruptions.ALL}, clean_error=clean_err,
          baseline=baseline)
      res['baseline'] = baseline if baseline in (None, 'alexnet') else 'given errors'
      report[suite] = res
    elif suite == 'pgd':
      report['pgd'] = attack_suite(run, max_examples=attack_examples)
    elif suite == 'apgd':
      report['apgd'] = apgd_suite(run, max_examples=attack_examples, num_steps=apgd_steps,
                                  num_target_classes=apgd_targets)
    elif suite == 'eps_star':
      report['eps_star'] = eps_star_suite(run, max_examples=attack_examples)
    elif suite == 'frequency':
      if attack_examples > 200:  # a full map is 32 x 32 frequencies x images forward passes
        logging.info('frequency: the Fourier heat map uses 200 of the %d attack_examples.',
                     attack_examples)
      report['frequency'] = frequency_suite(run, max_examples=min(200, attack_examples))
    report['timings_s'][suite] = time.time() - start
    logging.info('suite %s done in %.1fs', suite, report['timings_s'][suite])
  write_report(report, out_dir)
  return report


def _json_default(o):
  if isinstance(o, (np.floating, np.integer)):
    return o.item()
  if isinstance(o, np.ndarray):
    return o.tolist()
  return str(o)


def write_report(report: dict, out_dir: str) -> None:
  """report.json, one CSV per table, summary.md and PNG plots, in ``out_dir`` (local or a URI)."""
  out = files.as_path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  lines = [f'# Evaluation of `{report["workdir"]}`', '',
           f'{report["method"]} / {report["model"]} on {report["dataset"]}, step {report["step"]}, '
           f'BN domain `{report["domain"]}`, {report["devices"]} device(s).', '']
  if 'clean' in report:
    c = report['clean']
    lines += ['## Clean', '', '| top-1 | top-5 | loss | examples |', '|---|---|---|---|',
              f'| {100 * c["top1"]:.2f}% | {100 * c["top5"]:.2f}% | {c["loss"]:.4f} | '
              f'{c["count"]} |', '']
  for suite in ('corruptions', 'tfds_corruptions'):
    if suite not in report:
      continue
    errors = report[suite]['errors']
    sevs = sorted({int(s) for e in errors.values() for s in e})
    csv = ['corruption,' + ','.join(f'severity{s}' for s in sevs) + ',mean']
    md = ['## Corruption error (%, top-1)' + (' — official TFDS sets' if suite != 'corruptions'
                                              else ' — on-the-fly JAX corruptions'), '',
          '| corruption | ' + ' | '.join(f's{s}' for s in sevs) + ' | mean |',
          '|---' * (len(sevs) + 2) + '|']
    for name, per in errors.items():
      vals = [per[s] if s in per else per[str(s)] for s in sevs]
      csv.append(f'{name},' + ','.join(f'{v:.4f}' for v in vals) + f',{np.mean(vals):.4f}')
      md.append(f'| {name} | ' + ' | '.join(f'{100 * v:.1f}' for v in vals) +
                f' | {100 * np.mean(vals):.1f} |')
    means = [np.mean([per.get(s, per.get(str(s))) for per in errors.values()]) for s in sevs]
    md.append('| **mean** | ' + ' | '.join(f'**{100 * v:.1f}**' for v in means) +
              f' | **{100 * np.mean(means):.1f}** |')
    summary = report[suite].get('summary', {})
    keys = [k for k in summary if '/' not in k]
    if keys:  # (a subset of corruptions may leave only per-corruption entries)
      md += ['', 'Summary (unnormalised numbers are plain mean errors/accuracies; `*_normalized` '
             'are CE ratios to the baseline — AlexNet for ImageNet-C, or a baseline run):', '']
      if suite == 'corruptions' and report[suite].get('baseline') == 'alexnet':
        md += ['The corruptions here are generated on device and approximate the published set '
               '(no JPEG quality-85 re-save, a procedural frost): compare `*_normalized` with '
               'published mCE through the `tfds_corruptions` suite, which reads the official '
               'one.', '']
      md += [f'- {k}: {summary[k]:.4f}' for k in keys]
    md += ['']
    (out / f'{suite}.csv').write_text('\n'.join(csv) + '\n')
    lines += md
    # The plots take fractions and label their axes in percent.
    per_corruption = {n: float(np.mean(list(p.values()))) for n, p in errors.items()}
    plots.plot_corruption_errors(per_corruption, out / f'{suite}_bar.png')
    plots.plot_error_vs_severity(
        {n: {int(s): v for s, v in p.items()} for n, p in errors.items()},
        out / f'{suite}_severity.png')
  if 'pgd' in report or 'apgd' in report:
    rows = [('clean', report.get('pgd', {}).get('clean'))]
    rows += [(k, v) for k, v in report.get('pgd', {}).items() if k not in ('clean', 'curve')]
    rows += [(k, v) for k, v in report.get('apgd', {}).items() if k != 'settings']
    lines += ['## Adversarial robustness (L-inf, eps 8/255 unless stated)', '',
              '| attack | accuracy |', '|---|---|']
    lines += [f'| {_attack_label(k)} | {100 * v:.2f}% |' for k, v in rows if v is not None]
    lines += ['']
    (out / 'attacks.csv').write_text(
        'attack,accuracy\n' + ''.join(f'{k},{v:.4f}\n' for k, v in rows if v is not None))
    if 'pgd' in report:
      curve = report['pgd']['curve']
      eps255 = [e * 255 for e in curve['eps']]
      lines += [f'{curve["attack"]} accuracy vs eps (x/255): ' + ', '.join(
          f'{e:g}: {100 * a:.1f}%' for e, a in zip(eps255, curve['accuracy'])), '']
      plots.plot_accuracy_vs_eps({curve['attack']: (eps255, list(curve['accuracy']))},
                                 out / 'accuracy_vs_eps.png',
                                 xlabel='epsilon (x/255)')
  if 'eps_star' in report:
    h, w, c = report.get('image_shape', (None, None, None))
    bound = f' (searched up to sqrt({h}*{w}*{c}) = {np.sqrt(h * w * c):.1f})' if h else ''
    lines += ['## Noise robustness: median minimal L2 (epsilon*)', '',
              'L2 norm of the (clipped) perturbation over all pixel values, in [0, 1] pixel '
              f'units; "never flipped" images count as infinite{bound}.', '',
              '| noise | epsilon* | never flipped | misclassified clean |', '|---|---|---|---|']
    for noise, r in report['eps_star'].items():
      lines.append(f'| {noise} | {r["eps_star"]:.4f} | {100 * r["frac_never_flipped"]:.1f}% | '
                   f'{100 * r["frac_misclassified_clean"]:.1f}% |')
    lines.append('')
  if 'frequency' in report:
    fmap = np.asarray(report['frequency']['map'], dtype=float)
    plots.plot_frequency_heat_map(fmap, out / 'frequency_heat_map.png')
    text = io.StringIO()
    np.savetxt(text, fmap, delimiter=',', fmt='%.4f')
    (out / 'frequency.csv').write_text(text.getvalue())
    lines += ['## Fourier heat map', '', f'Error under a Fourier-basis perturbation of L2 norm '
              f'{report["frequency"]["norm"]} per channel and frequency (mean '
              f'{np.nanmean(fmap):.3f}); see `frequency_heat_map.png`.', '']
  lines += ['Timings (s): ' + ', '.join(f'{k} {v:.0f}' for k, v in report['timings_s'].items())]
  (out / 'summary.md').write_text('\n'.join(lines) + '\n')
  # Last: its presence marks a finished report (scripts/compare_methods.py skips those).
  (out / 'report.json').write_text(json.dumps(report, indent=1, default=_json_default))
