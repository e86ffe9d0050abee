"""epsilon* against adversarial noise (Rusak et al. 2020, section 3.3 and Table 2).

"To test the robustness against adversarial noise, we train a new noise generator at the end of
the Adversarial Noise Training until convergence and evaluate it according to Eq. (4)":

1. :func:`train_noise_generator`: a fresh ANT noise generator ``g_phi``
   (``jaxrobust.models.noise_generator``, 1x1 by default as in the paper's ``eps*_AN 1x1``) is
   trained to maximise ``CE(f(clip(x + delta)), y)`` with ``||clip(x + delta) - x||_2 = eps``
   against the FROZEN model ``f`` (a pure ``logits_fn``; the caller closes over the parameters
   and runs the model in inference mode, so nothing about the model changes). The steps are a
   jitted ``lax.scan`` over chunks of training batches.
2. :func:`adversarial_eps_star`: the median minimal L2 perturbation along the generator's noise,
   ``eps* = median ||delta_min||_2`` (Eq. 4), with ``jaxrobust.evaluation.noise_robustness``'s
   line search; the generator's raw output ``g_phi(z)`` (fresh ``z`` per image) is the direction.
   For reference it also reports eps* along Gaussian noise on the same images (``eps*_GN``).

The paper reports the mean and standard deviation over four generators trained with different
seeds; ``num_generators`` does the same.

Command line (a finished run's workdir; writes ``<workdir>/adversarial_noise.json``)::

    python -m jaxrobust.evaluation.adversarial_noise --workdir=/tmp/ant_small --eps=9.2 \\
      --steps=500 --num_eval=1000
"""

from __future__ import annotations

import functools
import itertools
import json
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrobust.evaluation import noise_robustness
from jaxrobust.models.noise_generator import NoiseGenerator, generate_noise

OPTIMIZERS = ('adam', 'sgd')
LogitsFn = Callable[[jax.Array], jax.Array]


def _unpack(batch):
  x, y, mask = noise_robustness.unpack_batch(batch)
  x = np.asarray(x, np.float32)
  mask = np.ones(x.shape[0], np.float32) if mask is None else np.asarray(mask, np.float32)
  return x, np.asarray(y, np.int32), mask.reshape(-1)


def _ce(logits, labels, weights):
  losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
  return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def make_generator_tx(optimizer: str, learning_rate: float) -> optax.GradientTransformation:
  if optimizer not in OPTIMIZERS:
    raise ValueError(f'Unknown optimizer {optimizer!r}; valid: {", ".join(OPTIMIZERS)}.')
  if not learning_rate > 0:
    raise ValueError(f'learning_rate={learning_rate!r}: allowed a value > 0.')
  return optax.adam(learning_rate) if optimizer == 'adam' else optax.sgd(learning_rate)


@functools.lru_cache(maxsize=None)
def _generator_chunk(generator: NoiseGenerator, optimizer: str, learning_rate: float,
                     eps: float):
  """``(tx, run_chunk)``: the generator's optimizer and a jitted ``lax.scan`` of ascent steps
  over a chunk of batches, compiled once per setting. The frozen model comes in as an argument
  (a ``Partial`` holding its weights), so every generator of an evaluation, and every model of
  a comparison, reuses the program."""
  tx = make_generator_tx(optimizer, learning_rate)

  def one_step(logits_fn, carry, inputs):
    params, opt_state = carry
    x, y, w, r = inputs

    def neg_ce(p):
      x_noisy = generate_noise(p, r, x, eps, generator=generator)
      return -_ce(logits_fn(x_noisy), y, w)

    loss, grads = jax.value_and_grad(neg_ce)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), -loss

  @jax.jit
  def run_chunk(logits_fn, params, opt_state, xs, ys, ws, key):
    keys = jax.random.split(key, xs.shape[0])
    (params, opt_state), ces = jax.lax.scan(functools.partial(one_step, logits_fn),
                                            (params, opt_state), (xs, ys, ws, keys))
    return params, opt_state, ces
  return tx, run_chunk


def train_noise_generator(logits_fn: LogitsFn, batches: Iterable[Any], rng: jax.Array, *,
                          eps: float, steps: int, generator: Optional[NoiseGenerator] = None,
                          learning_rate: float = 3e-3, optimizer: str = 'adam',
                          chunk: int = 8) -> tuple[Any, np.ndarray]:
  """Trains a fresh noise generator against a frozen model (maximises its cross-entropy).

  Each step: ``z ~ N(0,1)``, ``x' = clip(x + s g_phi(z))`` with the exact clipping-aware scale
  ``s`` (perturbation norm ``eps`` per image), ascent step on ``CE(logits_fn(x'), y)``.

  Args:
    logits_fn: pure ``x -> logits`` of the frozen model.
    batches: iterable of ``(x, y)`` or ``{'image', 'label'[, 'mask']}`` batches, all of one
      shape; ``steps`` of them are used (ValueError if it runs out).
    rng: key for the initialisation and the latent noise.
    eps: L2 norm of the applied perturbation, in [0, 1] pixel units (> 0).
    steps: number of generator updates (>= 1).
    generator: the generator module (default ``NoiseGenerator()``, ANT 1x1).
    learning_rate, optimizer: the generator's optimizer ('adam' or 'sgd').
    chunk: generator steps per compiled call (a ``lax.scan`` over that many batches).

  Returns:
    ``(params, ce)``: the generator's parameters and the cross-entropy before every step.
  """
  if int(steps) != steps or steps < 1:
    raise ValueError(f'steps={steps!r}: allowed an integer >= 1.')
  if not eps > 0:
    raise ValueError(f'eps={eps!r}: allowed a value > 0 (an L2 norm in [0, 1] pixel units).')
  generator = NoiseGenerator() if generator is None else generator
  tx, run_chunk = _generator_chunk(generator, optimizer, float(learning_rate), float(eps))
  chunk = max(d for d in range(1, min(int(chunk), int(steps)) + 1) if steps % d == 0)
  it = iter(batches)

  def take():
    try:
      return _unpack(next(it))
    except StopIteration:
      raise ValueError(f'batches ran out before {steps} generator steps') from None

  first = take()
  init_rng, rng = jax.random.split(rng)
  z0 = jnp.zeros(generator.latent_shape((1, 1, 1, first[0].shape[-1])), jnp.float32)
  params = generator.init(init_rng, z0)['params']
  opt_state = tx.init(params)
  logits_fn = noise_robustness.as_argument(logits_fn)

  history = []
  pending = [first]
  for i in range(steps // chunk):
    while len(pending) < chunk:
      pending.append(take())
    xs, ys, ws = (np.stack(a) for a in zip(*pending))
    pending = []
    params, opt_state, ces = run_chunk(logits_fn, params, opt_state, xs, ys, ws,
                                       jax.random.fold_in(rng, i))
    history.append(np.asarray(ces))
  return params, np.concatenate(history)


def _direction(generator: NoiseGenerator, params: Any, rng: jax.Array, x: jax.Array):
  return generator.apply({'params': params}, generator.sample_latent(rng, x.shape))


@functools.lru_cache(maxsize=None)
def _direction_of(generator: NoiseGenerator):
  return functools.partial(_direction, generator)  # one object per generator: one compilation


def generator_directions(generator: NoiseGenerator, params: Any) -> jax.tree_util.Partial:
  """``direction_fn(rng, x) -> g_phi(z)``, ``z ~ N(0,1)`` per image: a noise_robustness hook.

  A ``Partial`` holding the parameters, so the line search takes them as inputs and one
  compiled search serves every generator of the same architecture.
  """
  return jax.tree_util.Partial(_direction_of(generator), params)


BatchesArg = Union[Sequence[Any], Callable[[], Iterable[Any]]]


def _iterate(batches: BatchesArg) -> Iterable[Any]:
  return batches() if callable(batches) else batches


def adversarial_eps_star(logits_fn: LogitsFn, train_batches: BatchesArg, eval_batches: BatchesArg,
                         rng: jax.Array, *, eps: float, steps: int,
                         generator: Optional[NoiseGenerator] = None, learning_rate: float = 3e-3,
                         optimizer: str = 'adam', num_generators: int = 1, gaussian: bool = True,
                         max_eps: Optional[float] = None, num_coarse: int = 16,
                         num_bisect: int = 10, max_batches: Optional[int] = None) -> dict:
  """eps*_AN: trains fresh generators against a frozen model, then the median minimal L2.

  Args:
    logits_fn: pure ``x -> logits`` of the frozen model (inference mode).
    train_batches: a zero-argument callable returning a fresh iterator of training batches (one
      per generator), or a sequence of batches.
    eval_batches: the same for the evaluation images (each pass must yield the same images).
    rng: PRNG key; generator ``g`` uses ``fold_in(rng, g)``.
    eps, steps, generator, learning_rate, optimizer: see :func:`train_noise_generator`.
    num_generators: generators trained with different seeds (the paper: 4); the eps* of each is
      reported with their mean and standard deviation.
    gaussian: also report eps* along Gaussian noise on the same images.
    max_eps, num_coarse, num_bisect, max_batches: the line search (see
      ``noise_robustness.median_eps_star``).

  Returns:
    A dict: ``eps_star`` (mean over generators of the median eps*), ``eps_star_std``,
    ``per_generator`` (each generator's ``eps_star_statistics`` plus its first/last training
    cross-entropy), ``gaussian`` (Gaussian eps* statistics, if asked), the settings, and
    ``generator_params`` (the last generator's parameters).
  """
  if int(num_generators) != num_generators or num_generators < 1:
    raise ValueError(f'num_generators={num_generators!r}: allowed an integer >= 1.')
  generator = NoiseGenerator() if generator is None else generator
  search = dict(max_eps=max_eps, num_coarse=num_coarse, num_bisect=num_bisect,
                max_batches=max_batches)
  per_generator, params = [], None
  for g in range(int(num_generators)):
    train_rng, eval_rng = jax.random.split(jax.random.fold_in(rng, g))
    params, ces = train_noise_generator(logits_fn, _iterate(train_batches), train_rng, eps=eps,
                                        steps=steps, generator=generator,
                                        learning_rate=learning_rate, optimizer=optimizer)
    stats = noise_robustness.median_eps_star(
        logits_fn, _iterate(eval_batches), eval_rng,
        noise=generator_directions(generator, params), **search)
    stats.pop('per_image')
    stats.update(generator_ce_start=float(ces[0]), generator_ce_end=float(np.mean(ces[-10:])))
    per_generator.append(stats)
  values = np.array([s['eps_star'] for s in per_generator], np.float64)
  # A median of +inf (most images never flipped along that generator's noise) is a valid eps*;
  # the spread is then 0 if all agree and undefined (nan) otherwise.
  spread = (float(np.std(values)) if np.all(np.isfinite(values)) else
            0.0 if np.all(values == values[0]) else float('nan'))
  result = {'eps_star': float(np.mean(values)), 'eps_star_std': spread,
            'per_generator': per_generator, 'eps': float(eps), 'steps': int(steps),
            'learning_rate': float(learning_rate), 'optimizer': optimizer,
            'generator': '1x1' if generator.kernel_3x3_layer is None else '3x3',
            'generator_params': params}
  if gaussian:
    stats = noise_robustness.median_eps_star(logits_fn, _iterate(eval_batches),
                                             jax.random.fold_in(rng, 1 << 20), noise='gaussian',
                                             **search)
    stats.pop('per_image')
    result['gaussian'] = stats
  return result


# ----------------------------------------------------------------------------- a finished run


def evaluate_run(workdir: str, *, eps: float = 0.0, steps: int = 500,
                 learning_rate: float = 3e-3, optimizer: str = 'adam', generator: str = '1x1',
                 num_generators: int = 1, batch_size: int = 128, num_eval: int = 1000,
                 seed: int = 0, dataset: str = '', num_coarse: int = 16, num_bisect: int = 10,
                 gaussian: bool = True, output: str = '') -> dict:
  """eps*_AN (and eps*_GN) of a finished run; writes ``<workdir>/adversarial_noise.json``.

  Args:
    workdir: the run's workdir (its ``config.json`` and newest checkpoint are read; a relative
      ``folder:`` dataset path in the config is relative to the directory the run was started
      from, or override it with ``dataset``).
    eps: L2 radius of the generator's noise while it trains; 0 means ``ant.default_eps`` of the
      image shape, the same for every model whatever its method (an ANT run's own ``ant_eps``
      would give it another attacker than its baselines).
    steps, learning_rate, optimizer: the generator's training (on augmented training batches).
    generator: '1x1' (the paper's eps*_AN 1x1) or '3x3'.
    num_generators: generators with different seeds (the paper: 4).
    batch_size: batch size of the generator training and of the line search.
    num_eval: test images in the median (0 = the whole split).
    seed: seed of the generators, the latent noise and the training-batch orders (generator
      ``g`` trains on the order of seed ``seed + 1 + g``).
    dataset: overrides the run's dataset.
    num_coarse, num_bisect: the line search (``noise_robustness.minimal_l2_along_noise``).
    gaussian: also report eps* along Gaussian noise (eps*_GN) on the same images.
    output: the JSON path (default ``<workdir>/adversarial_noise.json``).

  Returns:
    The :func:`adversarial_eps_star` dict (without the generator parameters) plus the run's
    method, model and dataset.
  """
  from jaxrobust import data, files  # pylint: disable=g-import-not-at-top
  from jaxrobust.methods import ant  # pylint: disable=g-import-not-at-top
  from jaxrobust.evaluation import runner  # pylint: disable=g-import-not-at-top
  run = runner.load_run(workdir, overrides={'dataset': dataset} if dataset else None)
  config, info, logits_fn = run.config, run.info, run.predict_fn()
  # One attacker for every model: not the run's own ant_eps, which only ANT runs have
  eps = float(eps) or ant.default_eps(info.image_shape)
  gen = ant.make_generator(generator)
  data_dir = config.get('data_dir') or None
  source = data.make_source(info, info.train_split, data_dir)
  eval_source = data.make_source(info, info.eval_split, data_dir)

  batch_orders = itertools.count(seed + 1)

  def train_batches():  # called once per generator: each trains on its own batch order
    return data.train_iterator(info, global_batch_size=batch_size, seed=next(batch_orders),
                               source=source, data_dir=data_dir)

  def eval_batches():
    return data.eval_iterator(info, global_batch_size=batch_size, source=eval_source,
                              data_dir=data_dir, max_examples=num_eval or None)

  result = adversarial_eps_star(
      logits_fn, train_batches, eval_batches, jax.random.PRNGKey(seed), eps=eps, steps=steps,
      generator=gen, learning_rate=learning_rate, optimizer=optimizer,
      num_generators=num_generators, gaussian=gaussian, num_coarse=num_coarse,
      num_bisect=num_bisect)
  result.pop('generator_params')
  result.update(workdir=str(files.as_path(workdir)), method=config.method, model=config.model,
                dataset=config.dataset, num_eval=num_eval)
  output = files.as_path(output or files.as_path(workdir) / 'adversarial_noise.json')
  output.write_text(json.dumps(result, indent=2) + '\n')
  return result


def _main():
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('workdir', None, 'Workdir of a finished jaxrobust run.')
  flags.DEFINE_float('eps', 0.0, 'L2 radius of the generator noise ([0,1] units); 0 = '
                     'ant.default_eps of the image shape, the same for every compared run.')
  flags.DEFINE_integer('steps', 500, 'Generator training steps.')
  flags.DEFINE_float('learning_rate', 3e-3, 'Generator learning rate.')
  flags.DEFINE_enum('optimizer', 'adam', list(OPTIMIZERS), 'Generator optimizer.')
  flags.DEFINE_enum('generator', '1x1', ['1x1', '3x3'], 'Generator architecture.')
  flags.DEFINE_integer('num_generators', 1, 'Generators (seeds) to average (the paper: 4).')
  flags.DEFINE_integer('batch_size', 128, 'Batch size of training and line search.')
  flags.DEFINE_integer('num_eval', 1000, 'Test images for the median (0 = all).')
  flags.DEFINE_integer('seed', 0, 'Seed.')
  flags.DEFINE_string('dataset', '', "Override the run's dataset (e.g. folder:/path).")
  flags.DEFINE_string('output', '', 'Output JSON (default <workdir>/adversarial_noise.json).')
  flags.mark_flag_as_required('workdir')
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name

  def main(argv):
    del argv
    result = evaluate_run(FLAGS.workdir, eps=FLAGS.eps, steps=FLAGS.steps,
                          learning_rate=FLAGS.learning_rate, optimizer=FLAGS.optimizer,
                          generator=FLAGS.generator, num_generators=FLAGS.num_generators,
                          batch_size=FLAGS.batch_size, num_eval=FLAGS.num_eval, seed=FLAGS.seed,
                          dataset=FLAGS.dataset, output=FLAGS.output)
    print(json.dumps({k: result[k] for k in ('method', 'eps', 'eps_star', 'eps_star_std')}
                     | {'eps_star_gaussian': result['gaussian']['eps_star']}))
  app.run(main)


if __name__ == '__main__':
  _main()
