"""Projected gradient ascent attacks: PGD (L-inf / L2), FGSM, I-FGSM and unprojected GD.

The driver composes the parts of :mod:`jaxrobust.attacks.parts`::

    x^0     = project(init(rng, x))                       # random start (or x itself)
    x^{t+1} = project(x^t + step_size * dir(grad_x f(logits_fn(x^t), y)))   t = 0 .. n-1
    return stop_gradient(x^n)

with ``dir = sign`` for L-inf and ``g / ||g||_2`` for L2, ``project`` onto the eps-ball of the norm
intersected with [0, 1] (only the [0, 1] clip for GD), run as one ``jax.lax.scan`` (Madry et al.
2018; FGSM: Goodfellow et al. 2015; I-FGSM: Kurakin et al. 2017; GD: AdvProp, Xie et al. 2020,
Table 7). With ``restarts = R > 1`` the attack is run from R random starts (a ``lax.scan`` over
restarts, so memory does not grow with R) and, per example, the strongest result is kept: a
successful one (misclassified; for targeted attacks classified as the target) before an
unsuccessful one, and among equals the one with the higher loss. Restart r uses
``jax.random.fold_in(rng, r)``, so restart 0 is exactly the single-run attack and, when examples
are independent under ``logits_fn`` (eval-mode BN, as in every evaluation attack), more restarts
never give a weaker example. Under batch-statistics BN the assembled batch is scored under other
statistics than each restart was, so that guarantee does not hold there (no training preset uses
restarts).

Model-agnostic: ``logits_fn(x) -> logits`` is a pure function of the images only; the caller
closes over parameters, BatchNorm domain and train/eval mode and guarantees that calling it changes
no BatchNorm statistics (attacks never see BN state).

Static vs traced arguments (everything is jittable when called inside ``jax.jit``):
  static (Python values fixed at trace time): ``num_steps``, ``norm``, ``random_start``, ``loss``,
  ``targeted``, ``restarts``, ``project``;
  may be traced: ``x``, ``y``, ``rng``, ``eps``, ``step_size``, ``init_std``, ``target``,
  ``clean_logits`` (so e.g. an eps sweep reuses one compiled program).
Concrete values are validated eagerly (ValueError).
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp

from jaxrobust.attacks import losses as losses_lib
from jaxrobust.attacks import parts
from jaxrobust.attacks import validation

LogitsFn = Callable[[jax.Array], jax.Array]
RandomStart = Union[bool, str]


def _start_mode(random_start: RandomStart) -> Optional[str]:
  """Maps ``random_start`` (True/False or an init mode name) to an init mode or None."""
  if random_start is True:
    return 'uniform'
  if random_start is False or random_start is None:
    return None
  if random_start in parts.INIT_MODES:
    return random_start
  raise ValueError(f'Unknown random_start {random_start!r}; allowed values: True, False, '
                   f'{parts.INIT_MODES}.')


def loss_and_grad(logits_fn: LogitsFn, objective: losses_lib.LossFn, x_adv: jax.Array,
                  y: Optional[jax.Array]):
  """Per-example objective, logits and gradient of the summed objective w.r.t. the images.

  Under eval-mode BN examples are independent, so the gradient of the sum is the per-example
  gradient. Under batch-statistics BN (the training methods' default crafting mode) it also holds
  the cross-example terms through the batch statistics: the gradient of the batch objective, as
  in reference PyTorch code that attacks a model in train mode.

  Returns:
    (loss [B], logits [B, K], grad [B, ...]).
  """
  def total(z):
    logits = logits_fn(z)
    per_example = objective(logits, y)
    return jnp.sum(per_example), (per_example, logits)

  (_, (per_example, logits)), grad = jax.value_and_grad(total, has_aux=True)(x_adv)
  return per_example, logits, grad


class _Setup:
  """Validated, resolved configuration of one PGD-family call (Python-side, trace time)."""

  def __init__(self, logits_fn, x, y, rng, *, eps, step_size, num_steps, norm, random_start, loss,
               targeted, target, restarts, project, clean_logits, init_std):
    validation.check_range('eps', eps, low=0.0)
    validation.check_range('step_size', step_size, low=0.0)
    validation.check_range('init_std', init_std, low=0.0)
    self.num_steps = validation.check_int('num_steps', num_steps, low=1)
    self.restarts = validation.check_int('restarts', restarts, low=1)
    self.norm = parts.check_norm(norm)
    self.start_mode = _start_mode(random_start)
    if not isinstance(project, bool):
      raise ValueError(f'project must be True or False, got {project!r}.')
    if not isinstance(targeted, bool):
      raise ValueError(f'targeted must be True or False, got {targeted!r}.')
    if not callable(loss):
      validation.check_choice('loss', loss, losses_lib.PGD_LOSSES)
    if x.ndim < 2:
      raise ValueError(f'x must have a leading batch axis, got shape {x.shape}.')
    parts.check_images(x)
    if self.start_mode is not None and rng is None:
      raise ValueError('random_start needs an rng key; pass rng or random_start=False.')
    if y is None and (callable(loss) or loss != 'kl') and not targeted:
      raise ValueError(f'loss={loss!r} needs labels y.')
    batch = x.shape[0]
    self.y = None if y is None else losses_lib.broadcast_labels(y, batch)
    self.target = None
    if target is not None and not targeted:
      raise ValueError('target was given but targeted=False; pass targeted=True for a targeted '
                       'attack.')
    if targeted:
      if target is None:
        raise ValueError('targeted=True needs target (an int class or an int array of shape [B]).')
      self.target = losses_lib.broadcast_labels(target, batch)
    if loss == 'kl' and clean_logits is None:
      clean_logits = logits_fn(x)
    if clean_logits is not None:
      clean_logits = jax.lax.stop_gradient(clean_logits)
    self.objective = losses_lib.resolve(loss, targeted=targeted, target=self.target,
                                        clean_logits=clean_logits)
    self.targeted = targeted
    self.eps, self.step_size, self.init_std = eps, step_size, init_std
    self.project = project
    self.logits_fn = logits_fn
    # A placeholder key keeps the restart loop uniform when no randomness is used.
    self.rng = rng if rng is not None else jax.random.key(0)

  def start(self, rng, x):
    """Starting point x^0 of one run (projected / clipped)."""
    if self.start_mode is None:
      return x
    x0 = parts.init(rng, x, self.eps, self.norm, self.start_mode, self.init_std)
    return parts.project(x0, x, self.eps, self.norm, ball=self.project)

  def success(self, logits):
    """Per-example success: misclassified (untargeted) or classified as target (targeted)."""
    pred = jnp.argmax(logits, axis=-1)
    if self.targeted:
      return pred == self.target
    if self.y is None:
      return jnp.zeros(pred.shape, bool)
    return pred != self.y

  def run(self, rng, x, keep_trajectory=False):
    """One attack run; returns (x^n, iterates [n, B, ...] or None)."""
    def body(x_adv, _):
      _, _, grad = loss_and_grad(self.logits_fn, self.objective, x_adv, self.y)
      x_next = parts.project(parts.step(x_adv, grad, self.step_size, self.norm), x, self.eps,
                             self.norm, ball=self.project)
      return x_next, (x_next if keep_trajectory else None)

    return jax.lax.scan(body, self.start(rng, x), None, length=self.num_steps)


def stronger(success_new, loss_new, success_old, loss_old):
  """Per-example lexicographic comparison: is (success_new, loss_new) strictly stronger?

  A successful example beats an unsuccessful one; among equals the higher loss wins.
  """
  return (success_new & ~success_old) | ((success_new == success_old) & (loss_new > loss_old))


def keep_strongest(run_fn: Callable[[jax.Array], tuple], num_runs: int):
  """Runs ``run_fn(i)`` for i < num_runs and keeps, per example, the strongest result.

  Args:
    run_fn: maps a run index (traced int32 scalar) to (images [B, ...], success [B] bool,
      loss [B]).
    num_runs: static number of runs; runs 1..num_runs-1 are a ``lax.scan`` so memory does not grow
      with the number of runs.

  Returns:
    (images, success, loss) of the per-example strongest run (see :func:`stronger`).
  """
  first = run_fn(jnp.asarray(0, jnp.int32))
  if num_runs == 1:
    return first

  def body(best, i):
    xb, sb, lb = best
    xr, sr, lr = run_fn(i)
    better = stronger(sr, lr, sb, lb)
    mask = better.reshape(better.shape[:1] + (1,) * (xr.ndim - 1))
    return (jnp.where(mask, xr, xb), jnp.where(better, sr, sb), jnp.where(better, lr, lb)), None

  best, _ = jax.lax.scan(body, first, jnp.arange(1, num_runs, dtype=jnp.int32))
  return best


def pgd(logits_fn: LogitsFn, x: jax.Array, y: Optional[jax.Array], rng: Optional[jax.Array] = None,
        *, eps, step_size, num_steps: int, norm: str = 'linf', random_start: RandomStart = True,
        loss: Union[str, losses_lib.LossFn] = 'ce', targeted: bool = False, target=None,
        restarts: int = 1, project: bool = True, clean_logits: Optional[jax.Array] = None,
        init_std=1e-3) -> jax.Array:
  """Projected gradient ascent attack (Madry et al. 2018) within an L-inf or L2 ball.

  Args:
    logits_fn: pure ``images [B, ...] -> logits [B, K]``; must not update BN statistics.
    x: clean images in [0, 1], float, [B, H, W, C].
    y: integer labels [B] (may be None only for loss='kl').
    rng: PRNG key for the random start (may be None when ``random_start`` is False).
    eps: radius of the threat ball in [0, 1] pixel units (e.g. 8/255).
    step_size: step length per iteration (L-inf: per-pixel; L2: Euclidean).
    num_steps: number of gradient steps (static, >= 1).
    norm: 'linf' or 'l2'.
    random_start: False (start at x), True / 'uniform' (uniform in the ball), 'sphere' (on the
      sphere) or 'normal' (``x + init_std * N(0, I)``, TRADES).
    loss: 'ce', 'margin', 'kl' (TRADES, KL from ``clean_logits``), 'dlr', or a callable
      ``loss(logits, y) -> [B]`` to maximise.
    targeted: minimise the loss toward ``target`` instead of maximising it for ``y``.
    target: target class (int or int array [B]); required when ``targeted``.
    restarts: number of random restarts (static); the strongest result per example is kept.
    project: project onto the eps-ball (False: only clip to [0, 1], the GD attacker).
    clean_logits: clean logits for loss='kl' (computed with ``logits_fn(x)`` when None).
    init_std: standard deviation of the 'normal' random start.

  Returns:
    Adversarial images, same shape as x, with ``stop_gradient`` applied.
  """
  setup = _Setup(logits_fn, x, y, rng, eps=eps, step_size=step_size, num_steps=num_steps, norm=norm,
                 random_start=random_start, loss=loss, targeted=targeted, target=target,
                 restarts=restarts, project=project, clean_logits=clean_logits, init_std=init_std)
  if setup.restarts == 1:
    x_adv, _ = setup.run(jax.random.fold_in(setup.rng, 0), x)
    return jax.lax.stop_gradient(x_adv)

  def run(r):
    x_r, _ = setup.run(jax.random.fold_in(setup.rng, r), x)
    logits = logits_fn(x_r)
    return x_r, setup.success(logits), setup.objective(logits, setup.y)

  x_adv, _, _ = keep_strongest(run, setup.restarts)
  return jax.lax.stop_gradient(x_adv)


def pgd_trajectory(logits_fn: LogitsFn, x: jax.Array, y: Optional[jax.Array],
                   rng: Optional[jax.Array] = None, **kwargs):
  """Runs :func:`pgd` (one restart) and also returns every iterate, for tests and plots.

  Accepts the keyword arguments of :func:`pgd` except ``restarts``.

  Returns:
    (x_adv, iterates) where ``iterates`` has shape [num_steps + 1, B, ...] and holds x^0 (the
    projected start) through x^n = x_adv.
  """
  if kwargs.get('restarts', 1) != 1:
    raise ValueError(f"pgd_trajectory runs a single restart, got restarts={kwargs['restarts']}.")
  kwargs = dict(kwargs, restarts=1)
  setup = _Setup(logits_fn, x, y, rng, random_start=kwargs.pop('random_start', True),
                 loss=kwargs.pop('loss', 'ce'), norm=kwargs.pop('norm', 'linf'),
                 targeted=kwargs.pop('targeted', False), target=kwargs.pop('target', None),
                 project=kwargs.pop('project', True), clean_logits=kwargs.pop('clean_logits', None),
                 init_std=kwargs.pop('init_std', 1e-3), **kwargs)
  key = jax.random.fold_in(setup.rng, 0)
  x_adv, iterates = setup.run(key, x, keep_trajectory=True)
  iterates = jnp.concatenate([setup.start(key, x)[None], iterates], axis=0)
  return jax.lax.stop_gradient(x_adv), jax.lax.stop_gradient(iterates)


def fgsm(logits_fn: LogitsFn, x: jax.Array, y: Optional[jax.Array], rng: Optional[jax.Array] = None,
         *, eps, norm: str = 'linf', loss='ce', targeted: bool = False, target=None,
         clean_logits=None) -> jax.Array:
  """Fast gradient sign method (Goodfellow et al. 2015): one step of size eps from x, no restart.

  ``x_adv = clip(x + eps * sign(grad_x loss), 0, 1)`` for L-inf (``eps * g / ||g||_2`` for L2).
  Deterministic; ``rng`` is accepted for a uniform attack signature and ignored.
  """
  del rng
  return pgd(logits_fn, x, y, None, eps=eps, step_size=eps, num_steps=1, norm=norm,
             random_start=False, loss=loss, targeted=targeted, target=target, restarts=1,
             project=True, clean_logits=clean_logits)


def ifgsm(logits_fn: LogitsFn, x: jax.Array, y: Optional[jax.Array],
          rng: Optional[jax.Array] = None, *, eps, step_size, num_steps: int,
          norm: str = 'linf', loss='ce', targeted: bool = False, target=None,
          clean_logits=None) -> jax.Array:
  """Iterative FGSM (Kurakin et al. 2017): PGD without random start (starts at x; deterministic).

  ``rng`` is accepted for a uniform attack signature and ignored.
  """
  del rng
  return pgd(logits_fn, x, y, None, eps=eps, step_size=step_size, num_steps=num_steps, norm=norm,
             random_start=False, loss=loss, targeted=targeted, target=target, restarts=1,
             project=True, clean_logits=clean_logits)


def gd(logits_fn: LogitsFn, x: jax.Array, y: Optional[jax.Array], rng: Optional[jax.Array] = None,
       *, eps, step_size, num_steps: int, norm: str = 'linf', random_start: RandomStart = True,
       loss='ce', targeted: bool = False, target=None, restarts: int = 1,
       clean_logits=None, init_std=1e-3) -> jax.Array:
  """Gradient ascent without projection onto the eps-ball (AdvProp's "GD" attacker, Table 7).

  Identical to PGD (random start in the eps-ball, same steps) except that iterates are only
  clipped to [0, 1], so after ``num_steps`` steps the perturbation can reach
  ``eps + num_steps * step_size`` in L-inf.
  """
  return pgd(logits_fn, x, y, rng, eps=eps, step_size=step_size, num_steps=num_steps, norm=norm,
             random_start=random_start, loss=loss, targeted=targeted, target=target,
             restarts=restarts, project=False, clean_logits=clean_logits, init_std=init_std)
