"""Losses and update helpers shared by the methods."""

import jax
import jax.numpy as jnp
import optax

from jaxrobust.parallel import AXIS


def cross_entropy(logits, labels, label_smoothing: float = 0.0, weights=None):
  """Mean softmax cross-entropy with integer labels (optionally label-smoothed / weighted)."""
  num_classes = logits.shape[-1]
  targets = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  losses = optax.softmax_cross_entropy(logits, targets)
  if weights is None:
    return jnp.mean(losses)
  return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def soft_cross_entropy(logits, target_probs):
  """Mean cross-entropy against probability targets: ``-mean_i sum_k t_ik log softmax(z_i)_k``."""
  return jnp.mean(-jnp.sum(target_probs * jax.nn.log_softmax(logits), axis=-1))


def distillation_kl(teacher_logits, student_logits, temperature: float = 1.0):
  """``KL(p_teacher || p_student)``, summed over classes, averaged over the batch.

  The teacher side is ``stop_gradient``-ed: distillation moves the student towards the teacher,
  never the teacher towards the student. (PyTorch's ``reduction='batchmean'``; ``'mean'`` would
  further divide by the number of classes.)
  """
  t = jax.lax.stop_gradient(teacher_logits) / temperature
  log_p = jax.nn.log_softmax(t)
  log_q = jax.nn.log_softmax(student_logits / temperature)
  return jnp.mean(jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)) * temperature ** 2


def accuracy(logits, labels):
  return jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))


def apply_gradients(state, grads, tx, *, params_field: str = 'params'):
  """Averages per-device gradients over ``'batch'``, applies ``tx`` and counts the step."""
  grads = jax.lax.pmean(grads, AXIS)
  params = getattr(state, params_field)
  updates, opt_state = tx.update(grads, state.opt_state, params)
  return state.replace(**{params_field: optax.apply_updates(params, updates)},
                       opt_state=opt_state, step=state.step + 1)


def global_norm(tree):
  return optax.global_norm(tree)
