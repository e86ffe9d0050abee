"""Per-example attack objectives on logits. Attacks *maximise* the loss returned by :func:`resolve`.

All functions take logits of shape [B, K] and integer labels of shape [B] and return a per-example
loss of shape [B]:

* ``cross_entropy``: ``-log softmax(z)_y``.
* ``margin`` (Carlini-Wagner style): ``max_{j != y} z_j - z_y`` (> 0 iff misclassified).
* ``kl_divergence`` (TRADES inner maximisation): ``KL(softmax(z_clean) || softmax(z))``.
* ``dlr`` (Croce & Hein 2020, Eq. 6): ``-(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3)``.
* ``dlr_targeted`` (Croce & Hein 2020, Eq. 7): ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``,
  where pi sorts the logits in decreasing order.

Targeted attacks maximise the *negated* loss towards the target class (e.g. ``-CE(z, t)``), i.e.
they minimise the loss toward the target.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp

LossFn = Callable[[jax.Array, jax.Array], jax.Array]

# Names accepted by PGD-family attacks.
PGD_LOSSES = ('ce', 'margin', 'kl', 'dlr')
# Names accepted by APGD (AutoAttack's spelling with '-' is accepted too).
APGD_LOSSES = ('ce', 'dlr', 'ce_targeted', 'dlr_targeted')

# Same guard as AutoAttack's DLR: a 1e-12 in the denominator.
_DLR_TINY = 1e-12


def cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy ``-log softmax(logits)_y``; shape [B]."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.take_along_axis(logp, y[:, None].astype(jnp.int32), axis=-1)[:, 0]


def _true_logit_and_max_other(logits: jax.Array, y: jax.Array):
  """Returns (z_y, max_{j != y} z_j), each of shape [B]."""
  onehot = jax.nn.one_hot(y, logits.shape[-1], dtype=bool)
  z_y = jnp.sum(jnp.where(onehot, logits, 0.0), axis=-1)
  z_other = jnp.max(jnp.where(onehot, -jnp.inf, logits), axis=-1)
  return z_y, z_other


def margin(logits: jax.Array, y: jax.Array) -> jax.Array:
  """Carlini-Wagner margin ``max_{j != y} z_j - z_y``; positive exactly when y is not the argmax."""
  z_y, z_other = _true_logit_and_max_other(logits, y)
  return z_other - z_y


def kl_divergence(clean_logits: jax.Array, logits: jax.Array) -> jax.Array:
  """TRADES inner objective ``KL(p_clean || p) = sum_k p_clean,k (log p_clean,k - log p_k)``.

  Matches TRADES' ``KLDivLoss(log_softmax(model(x_adv)), softmax(model(x)))`` summed per example.

  Args:
    clean_logits: logits at the clean images [B, K] (treated as constants).
    logits: logits at the perturbed images [B, K].
  """
  logp_clean = jax.nn.log_softmax(jax.lax.stop_gradient(clean_logits), axis=-1)
  logp = jax.nn.log_softmax(logits, axis=-1)
  return jnp.sum(jnp.exp(logp_clean) * (logp_clean - logp), axis=-1)


def dlr(logits: jax.Array, y: jax.Array) -> jax.Array:
  """Difference-of-logits-ratio loss of Croce & Hein (2020), Eq. 6.

  ``DLR(z, y) = -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3 + 1e-12)`` with pi the decreasing order
  of the logits. Shift- and scale-invariant in the logits. Needs at least 3 classes.
  """
  num_classes = logits.shape[-1]
  if num_classes < 3:
    raise ValueError(f'DLR loss needs at least 3 classes, got {num_classes}.')
  top, _ = jax.lax.top_k(logits, 3)
  z_y, z_other = _true_logit_and_max_other(logits, y)
  return -(z_y - z_other) / (top[:, 0] - top[:, 2] + _DLR_TINY)


def dlr_targeted(logits: jax.Array, y: jax.Array, target: jax.Array) -> jax.Array:
  """Targeted DLR loss of Croce & Hein (2020), Eq. 7.

  ``DLR_t(z, y, t) = -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``. Maximising it pushes
  the target logit above the true one. Needs at least 4 classes.
  """
  num_classes = logits.shape[-1]
  if num_classes < 4:
    raise ValueError(f'Targeted DLR loss needs at least 4 classes, got {num_classes}.')
  top, _ = jax.lax.top_k(logits, 4)
  z_y = jnp.take_along_axis(logits, y[:, None].astype(jnp.int32), axis=-1)[:, 0]
  z_t = jnp.take_along_axis(logits, target[:, None].astype(jnp.int32), axis=-1)[:, 0]
  return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + _DLR_TINY)


def broadcast_labels(labels, batch_size: int) -> jax.Array:
  """Turns an int or an int array of shape [B] into an int32 array of shape [B]."""
  labels = jnp.asarray(labels, dtype=jnp.int32)
  if labels.ndim == 0:
    return jnp.full((batch_size,), labels, dtype=jnp.int32)
  if labels.shape != (batch_size,):
    raise ValueError(f'Target labels must be a scalar or have shape ({batch_size},), got '
                     f'{labels.shape}.')
  return labels


def resolve(loss: Union[str, LossFn], *, targeted: bool = False, target: Optional[jax.Array] = None,
            clean_logits: Optional[jax.Array] = None) -> LossFn:
  """Builds the per-example objective ``f(logits, y) -> [B]`` that a PGD-family attack maximises.

  Args:
    loss: 'ce', 'margin', 'kl', 'dlr' or a callable ``loss(logits, y) -> [B]`` (larger = stronger
      attack for untargeted use).
    targeted: if True the objective is ``-loss(logits, target)``: maximising it minimises the loss
      toward the target class (for 'margin': maximises ``z_t - max_{j != t} z_j``).
    target: target labels [B] (already broadcast), required when ``targeted``.
    clean_logits: clean logits [B, K] for 'kl' (required for it).

  Returns:
    The objective; for 'kl' it ignores its label argument.
  """
  if callable(loss):
    base = loss
  elif loss == 'ce':
    base = cross_entropy
  elif loss == 'margin':
    base = margin
  elif loss == 'dlr':
    base = dlr
  elif loss == 'kl':
    if targeted:
      raise ValueError("loss='kl' (TRADES) has no targeted variant; use 'ce' or 'margin'.")
    if clean_logits is None:
      raise ValueError("loss='kl' needs clean_logits.")
    return lambda logits, y: kl_divergence(clean_logits, logits)
  else:
    raise ValueError(f'Unknown loss {loss!r}; allowed values: {PGD_LOSSES} or a callable '
                     'loss(logits, y) -> per-example loss.')
  if not targeted:
    return base
  if target is None:
    raise ValueError('targeted=True needs target (an int class or an int array of shape [B]).')
  return lambda logits, y: -base(logits, target)
