"""APGD-CE and APGD-T: Auto-PGD of Croce & Hein (2020), "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks" (ICML), Algorithm 1.

Report results as APGD-CE / APGD-T, not as "AutoAttack" (which is an ensemble also containing FAB
and Square).

Algorithm (per example; everything is batch-vectorised with per-example step sizes):

* Start ``x^0`` = random point in the ball (L-inf: uniform start rescaled to the sphere as
  AutoAttack does; L2: ``x + eps * z / ||z||``), clipped to [0, 1]. Step size ``eta^0 = 2 eps``.
* ``z^{k+1} = P(x^k + eta^k * dir(grad f(x^k)))``;
  ``x^{k+1} = P(x^k + a (z^{k+1} - x^k) + (1 - a)(x^k - x^{k-1}))`` with momentum ``a = 0.75``
  (``a = 1`` for the first step); P projects onto the eps-ball ∩ [0, 1].
* Track the best point ``x_max`` (highest loss ``f_max``) and the last misclassified iterate.
* Checkpoints ``w_j = ceil(p_j N)`` with ``p_0 = 0``, ``p_1 = 0.22``,
  ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``. At ``w_j`` the step size is halved and the
  iterate restarted from ``x_max`` (with the gradient stored for it) if
    1. ``#{i in [w_{j-1}, w_j) : f(x^{i+1}) > f(x^i)} < rho (w_j - w_{j-1})`` (too few increasing
       steps; rho = 0.75), or
    2. the step size was not reduced at ``w_{j-1}`` and ``f_max`` did not increase since
       ``w_{j-1}``.
* Return the last misclassified iterate if there was one, else ``x_max``; points the model already
  misclassifies are returned unchanged (AutoAttack does not attack them).

Where the reference implementation (fra31/auto-attack, ``autopgd_base.py``) and the paper differ we
follow the paper and say so:
  - checkpoints: we use the paper's ``ceil(p_j N)`` (computed with exact fractions); the reference's
    integer recurrence ``k <- max(k - int(0.03 N), int(0.06 N))`` gives the same checkpoints for
    N = 100 (22, 41, 57, 70, 80, 87, 93, 99) but not for every N;
  - condition 1 uses the paper's strict ``<`` (the reference uses ``<=``; they differ only when
    ``rho * window`` is an integer, e.g. window 16);
  - the first increase count compares ``f(x^1)`` with ``f(x^0)`` (the reference compares with an
    unfilled zero entry);
  - condition 2 is disabled at the first checkpoint, as in the reference (the paper leaves
    ``eta^{w_0}`` vs ``eta^{w_1}`` implicit);
  - not-yet-fooled points are returned as ``x_max`` instead of the clean image, so the output is
    also useful as a maximal-loss example; robust accuracy is unaffected.

Static vs traced: ``num_steps``, ``norm``, ``loss``, ``restarts``, ``num_target_classes`` are
static; ``eps``, ``rho``, ``alpha``, ``x``, ``y``, ``rng``, ``target_class`` may be traced.
Everything runs as ``lax.scan`` loops (over iterations, restarts and target classes).
"""

from __future__ import annotations

import fractions
import math
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxrobust.attacks import losses as losses_lib
from jaxrobust.attacks import parts
from jaxrobust.attacks import pgd_family as pgd_lib
from jaxrobust.attacks import validation

LogitsFn = Callable[[jax.Array], jax.Array]

_P1 = fractions.Fraction(22, 100)
_DECREMENT = fractions.Fraction(3, 100)
_MIN_GAP = fractions.Fraction(6, 100)


def checkpoint_fractions(max_fraction: float = 1.0) -> tuple:
  """The paper's checkpoint fractions ``p_0 = 0``, ``p_1 = 0.22``,
  ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``.

  Returns:
    Exact ``fractions.Fraction`` values ``p_j <= max_fraction``.
  """
  ps = [fractions.Fraction(0), _P1]
  while True:
    nxt = ps[-1] + max(ps[-1] - ps[-2] - _DECREMENT, _MIN_GAP)
    if nxt > max_fraction:
      return tuple(ps)
    ps.append(nxt)


def checkpoints(num_steps: int) -> tuple:
  """Iterations ``w_j = ceil(p_j * num_steps)``, j >= 1, at which APGD may halve its step size.

  ``w_j`` counts completed steps (the check happens after ``x^{w_j}`` has been evaluated).
  Duplicates (possible for small N) are dropped. For N = 100: (22, 41, 57, 70, 80, 87, 93, 99).
  """
  num_steps = validation.check_int('num_steps', num_steps, low=1)
  out = []
  for p in checkpoint_fractions()[1:]:
    w = math.ceil(p * num_steps)
    if w <= num_steps and (not out or w > out[-1]):
      out.append(w)
  return tuple(out)


def _schedule(num_steps: int):
  """Per-iteration scan inputs: is-checkpoint flags and window lengths ``w_j - w_{j-1}``."""
  is_ckpt = np.zeros(num_steps, bool)
  window = np.ones(num_steps, np.float32)
  prev = 0
  for w in checkpoints(num_steps):
    is_ckpt[w - 1] = True  # step index t produces x^{t+1}
    window[w - 1] = w - prev
    prev = w
  return jnp.asarray(is_ckpt), jnp.asarray(window)


def halve_step_size(n_increase, window, rho, reduced_at_last_checkpoint,
                    loss_best_at_last_checkpoint, loss_best):
  """APGD's per-example step-size decision at a checkpoint ``w_j`` (Croce & Hein 2020, sec. 3.2).

  Condition 1: ``n_increase < rho * window``, where ``n_increase`` counts the steps
  ``i in [w_{j-1}, w_j)`` with ``f(x^{i+1}) > f(x^i)`` and ``window = w_j - w_{j-1}``.
  Condition 2: the step size was not halved at ``w_{j-1}`` and the best loss has not increased since
  then (``f_max^{w_{j-1}} >= f_max^{w_j}``).

  Returns:
    bool [B]: halve the step size and restart from the best point.
  """
  cond1 = n_increase < rho * window
  cond2 = ~reduced_at_last_checkpoint & (loss_best_at_last_checkpoint >= loss_best)
  return cond1 | cond2


class APGDResult(NamedTuple):
  """Outputs of one APGD run (all per example, with ``stop_gradient`` applied).

  Attributes:
    x_adv: last misclassified iterate if any (or the clean image if already misclassified), else
      ``x_best``: what :func:`apgd` returns.
    success: whether the model misclassified ``x_adv`` [B].
    x_best: highest-loss point ``x_max`` [B, ...].
    loss_best: its loss ``f_max`` [B].
    step_sizes: step size used at every iteration, [num_steps, B] (``eta`` before each step).
    losses: loss of every evaluated iterate ``f(x^{t+1})``, [num_steps, B].
    trajectory: iterates ``x^1..x^N`` as evaluated (before any restart to ``x_max``),
      [num_steps, B, ...], or None.
  """
  x_adv: jax.Array
  success: jax.Array
  x_best: jax.Array
  loss_best: jax.Array
  step_sizes: jax.Array
  losses: jax.Array
  trajectory: Optional[jax.Array]


def _objective(loss: str, target_class):
  """APGD objective ``f(logits, y) -> [B]`` for a loss name."""
  if loss == 'ce':
    return losses_lib.cross_entropy
  if loss == 'dlr':
    return losses_lib.dlr
  if target_class is None:
    raise ValueError(f'loss={loss!r} needs target_class (an int class or int array [B]).')
  if loss == 'ce_targeted':
    return lambda logits, y: -losses_lib.cross_entropy(logits, target_class)
  return lambda logits, y: losses_lib.dlr_targeted(logits, y, target_class)


def _canonical_loss(loss: str) -> str:
  loss = loss.replace('-', '_') if isinstance(loss, str) else loss
  validation.check_choice('loss', loss, losses_lib.APGD_LOSSES)
  return loss


def _validate(eps, num_steps, norm, rho, alpha, restarts):
  validation.check_range('eps', eps, low=0.0)
  validation.check_range('rho', rho, low=0.0, high=1.0)
  validation.check_range('alpha', alpha, low=0.0, high=1.0)
  validation.check_int('num_steps', num_steps, low=1)
  validation.check_int('restarts', restarts, low=1)
  parts.check_norm(norm)


def apgd_run(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, rng: jax.Array, *, eps,
             num_steps: int = 100, norm: str = 'linf', loss: str = 'ce', target_class=None,
             rho=0.75, alpha=0.75, keep_trajectory: bool = False) -> APGDResult:
  """One APGD run (no restarts) with full diagnostics; see the module docstring for the algorithm.

  Args:
    logits_fn: pure ``images -> logits``; must not update BN statistics.
    x: clean images in [0, 1] [B, H, W, C].
    y: integer labels [B].
    rng: PRNG key of the random start.
    eps: radius of the ball.
    num_steps: number of iterations N (static).
    norm: 'linf' or 'l2'.
    loss: 'ce', 'dlr', 'ce_targeted' or 'dlr_targeted'.
    target_class: target labels (int or [B]) for the targeted losses.
    rho: threshold of condition 1 (0.75).
    alpha: momentum (0.75).
    keep_trajectory: also return every evaluated iterate (memory N x batch).

  Returns:
    An :class:`APGDResult`.
  """
  _validate(eps, num_steps, norm, rho, alpha, 1)
  parts.check_images(x)
  loss = _canonical_loss(loss)
  batch = x.shape[0]
  y = losses_lib.broadcast_labels(y, batch)
  if target_class is not None:
    target_class = losses_lib.broadcast_labels(target_class, batch)
  objective = _objective(loss, target_class)

  def evaluate(z):
    return pgd_lib.loss_and_grad(logits_fn, objective, z, y)

  def wrong(logits):
    return jnp.argmax(logits, axis=-1) != y

  def sel(mask, a, b):
    """Per-example select between two batches."""
    return jnp.where(mask.reshape(mask.shape[:1] + (1,) * (a.ndim - 1)), a, b)

  def proj(z):
    return parts.project(z, x, eps, norm)

  x0 = proj(parts.init(rng, x, eps, norm, mode='sphere'))
  loss0, logits0, grad0 = evaluate(x0)
  eta0 = jnp.full((batch,), 2.0, x.dtype) * eps
  is_ckpt, window = _schedule(num_steps)
  steps = jnp.arange(num_steps)

  carry0 = dict(
      x_cur=x0, x_prev=x0, grad=grad0, eta=eta0, loss_prev=loss0,
      n_increase=jnp.zeros((batch,), jnp.float32),
      x_best=x0, grad_best=grad0, loss_best=loss0,
      loss_best_at_ckpt=loss0, reduced_at_ckpt=jnp.ones((batch,), bool),
      x_adv=x0, success=wrong(logits0))

  def body(c, inputs):
    t, ckpt, win = inputs
    # Momentum is off for the first step (a = 1).
    a = jnp.where(t == 0, 1.0, alpha).astype(x.dtype)
    z = proj(parts.step(c['x_cur'], c['grad'], c['eta'], norm))
    x_new = proj(c['x_cur'] + a * (z - c['x_cur']) + (1.0 - a) * (c['x_cur'] - c['x_prev']))
    loss_new, logits_new, grad_new = evaluate(x_new)

    fooled = wrong(logits_new)
    x_adv = sel(fooled, x_new, c['x_adv'])
    success = c['success'] | fooled

    n_increase = c['n_increase'] + (loss_new > c['loss_prev']).astype(jnp.float32)
    improved = loss_new > c['loss_best']
    x_best = sel(improved, x_new, c['x_best'])
    grad_best = sel(improved, grad_new, c['grad_best'])
    loss_best = jnp.where(improved, loss_new, c['loss_best'])

    reduce = ckpt & halve_step_size(n_increase, win, rho, c['reduced_at_ckpt'],
                                    c['loss_best_at_ckpt'], loss_best)
    new = dict(
        x_cur=sel(reduce, x_best, x_new),
        x_prev=c['x_cur'],
        grad=sel(reduce, grad_best, grad_new),
        eta=jnp.where(reduce, 0.5 * c['eta'], c['eta']),
        loss_prev=loss_new,
        n_increase=jnp.where(ckpt, 0.0, n_increase),
        x_best=x_best, grad_best=grad_best, loss_best=loss_best,
        loss_best_at_ckpt=jnp.where(ckpt, loss_best, c['loss_best_at_ckpt']),
        reduced_at_ckpt=jnp.where(ckpt, reduce, c['reduced_at_ckpt']),
        x_adv=x_adv, success=success)
    outputs = (c['eta'], loss_new, x_new if keep_trajectory else None)
    return new, outputs

  final, (step_sizes, loss_hist, trajectory) = jax.lax.scan(body, carry0, (steps, is_ckpt, window))

  # Points that are misclassified to begin with are not attacked (returned as they are).
  clean_wrong = wrong(logits_fn(x))
  success = final['success']
  x_adv = sel(clean_wrong, x, sel(success, final['x_adv'], final['x_best']))
  sg = jax.lax.stop_gradient
  return APGDResult(
      x_adv=sg(x_adv), success=success | clean_wrong, x_best=sg(final['x_best']),
      loss_best=sg(final['loss_best']), step_sizes=sg(step_sizes), losses=sg(loss_hist),
      trajectory=None if trajectory is None else sg(trajectory))


def _restarted(logits_fn, x, y, rng, restarts, **kwargs):
  """Runs :func:`apgd_run` ``restarts`` times (keys ``fold_in(rng, r)``); keeps the strongest."""
  def run(r):
    res = apgd_run(logits_fn, x, y, jax.random.fold_in(rng, r), **kwargs)
    return res.x_adv, res.success, res.loss_best

  return pgd_lib.keep_strongest(run, restarts)


def apgd(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, rng: jax.Array, *, eps,
         num_steps: int = 100, norm: str = 'linf', loss: str = 'ce', target_class=None,
         rho=0.75, alpha=0.75, restarts: int = 1) -> jax.Array:
  """APGD (Croce & Hein 2020) with restarts; returns adversarial images (``stop_gradient``-ed).

  Args:
    logits_fn: pure ``images -> logits``; must not update BN statistics.
    x: clean images in [0, 1] [B, H, W, C].
    y: integer labels [B].
    rng: PRNG key; restart r uses ``fold_in(rng, r)``.
    eps: radius of the ball.
    num_steps: iterations per restart (static; 100 in AutoAttack).
    norm: 'linf' or 'l2'.
    loss: 'ce' (APGD-CE), 'dlr' (APGD-DLR), 'ce_targeted' or 'dlr_targeted' (need target_class).
    target_class: target labels (int or int array [B]) for the targeted losses.
    rho: condition-1 threshold.
    alpha: momentum.
    restarts: number of runs (static); per example a misclassified result is preferred, then the
      higher best loss.

  Returns:
    Adversarial images, same shape as x.
  """
  _validate(eps, num_steps, norm, rho, alpha, restarts)
  x_adv, _, _ = _restarted(logits_fn, x, y, rng, restarts, eps=eps, num_steps=num_steps,
                           norm=norm, loss=loss, target_class=target_class, rho=rho, alpha=alpha)
  return jax.lax.stop_gradient(x_adv)


def apgd_ce(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, rng: jax.Array, *, eps,
            num_steps: int = 100, norm: str = 'linf', rho=0.75, alpha=0.75,
            restarts: int = 1) -> jax.Array:
  """APGD-CE: APGD on the cross-entropy loss (see :func:`apgd`)."""
  return apgd(logits_fn, x, y, rng, eps=eps, num_steps=num_steps, norm=norm, loss='ce', rho=rho,
              alpha=alpha, restarts=restarts)


def target_classes(clean_logits: jax.Array, y: jax.Array, num_target_classes: int) -> jax.Array:
  """APGD-T's targets: the ``num_target_classes`` highest clean-logit classes other than y.

  For a correctly classified example these are the 2nd, 3rd, ... most likely classes, as in
  AutoAttack (``sort(logits)[:, -k]`` for k = 2 .. n_target_classes + 1).

  Returns:
    int32 array [B, num_target_classes], most likely target first.
  """
  num_classes = clean_logits.shape[-1]
  if not 1 <= num_target_classes <= num_classes - 1:
    raise ValueError(f'num_target_classes={num_target_classes} is out of range; allowed: 1 .. '
                     f'{num_classes - 1} (number of classes - 1).')
  onehot = jax.nn.one_hot(y, num_classes, dtype=bool)
  masked = jnp.where(onehot, -jnp.inf, clean_logits)
  _, idx = jax.lax.top_k(masked, num_target_classes)
  return idx.astype(jnp.int32)


def apgd_t(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, rng: jax.Array, *, eps,
           num_steps: int = 100, norm: str = 'linf', num_target_classes: int = 9, rho=0.75,
           alpha=0.75, restarts: int = 1) -> jax.Array:
  """APGD-T: APGD on the targeted DLR loss, once per target among the top-k other classes.

  For every k < num_target_classes (a ``lax.scan``), targets are the (k+1)-th most likely non-true
  class of the clean logits; each runs ``restarts`` APGD runs with key ``fold_in(fold_in(rng, k),
  r)``. Per example the result that misclassifies is kept (then the higher targeted-DLR loss).
  Needs at least 4 classes (the targeted DLR denominator uses the 4th largest logit).

  Args:
    num_target_classes: number of target classes (static; 9 in AutoAttack for 10 classes).
    Others as :func:`apgd`.

  Returns:
    Adversarial images, same shape as x.
  """
  _validate(eps, num_steps, norm, rho, alpha, restarts)
  validation.check_int('num_target_classes', num_target_classes, low=1)
  y = losses_lib.broadcast_labels(y, x.shape[0])
  clean_logits = jax.lax.stop_gradient(logits_fn(x))
  if clean_logits.shape[-1] < 4:
    raise ValueError(f'APGD-T needs at least 4 classes, got {clean_logits.shape[-1]}.')
  targets = target_classes(clean_logits, y, num_target_classes)

  def run(k):
    return _restarted(logits_fn, x, y, jax.random.fold_in(rng, k), restarts, eps=eps,
                      num_steps=num_steps, norm=norm, loss='dlr_targeted',
                      target_class=targets[:, k], rho=rho, alpha=alpha)

  x_adv, _, _ = pgd_lib.keep_strongest(run, num_target_classes)
  return jax.lax.stop_gradient(x_adv)
