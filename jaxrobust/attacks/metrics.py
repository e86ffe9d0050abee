"""Robust-accuracy helpers for evaluating attacks.

A point counts as robust only if the model classifies the clean image *and* its adversarial
counterpart correctly (pass ``x_clean`` to enforce the first half; APGD already returns
misclassified clean images unchanged).
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from jaxrobust.attacks import parts


def correct(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
  """Per-example correctness ``argmax logits_fn(x) == y``; bool [B]."""
  return jnp.argmax(logits_fn(x), axis=-1) == y


def robust_correct(logits_fn, x_adv: jax.Array, y: jax.Array,
                   x_clean: Optional[jax.Array] = None) -> jax.Array:
  """Per-example robustness: correct on ``x_adv`` (and on ``x_clean`` when given); bool [B]."""
  ok = correct(logits_fn, x_adv, y)
  if x_clean is not None:
    ok = ok & correct(logits_fn, x_clean, y)
  return ok


def robust_accuracy(logits_fn, x_adv: jax.Array, y: jax.Array,
                    x_clean: Optional[jax.Array] = None) -> jax.Array:
  """Fraction of examples classified correctly under attack (see :func:`robust_correct`)."""
  return jnp.mean(robust_correct(logits_fn, x_adv, y, x_clean).astype(jnp.float32))


def worst_case_correct(*corrects: jax.Array) -> jax.Array:
  """Per-example robustness against several attacks: correct under every one of them."""
  if not corrects:
    raise ValueError('worst_case_correct needs at least one array of per-example correctness.')
  out = corrects[0]
  for c in corrects[1:]:
    out = out & c
  return out


def perturbation_stats(x_adv: jax.Array, x: jax.Array, norm: str) -> dict:
  """Mean and max per-example perturbation size ``||x_adv - x||`` in ``norm`` (for reports)."""
  n = parts.perturbation_norm(x_adv, x, norm)
  return {'mean': jnp.mean(n), 'max': jnp.max(n)}
