"""Losses, update helpers and key streams shared by the methods."""

import zlib
from typing import Sequence, Tuple

from absl import logging
import jax
import jax.numpy as jnp
import optax

from jaxrobust.models import MAIN, apply_model
from jaxrobust import parallel
from jaxrobust.parallel import AXIS


def stream_key(run_key, name: str, counter) -> jax.Array:
  """The ``counter``-th key of the named stream ``name`` of the run: the same on every device.

  For draws that every device must agree on (a step's subnet, a batch's mixing weight) or that
  happen outside the step (a search, a restart). The loop gives step ``s`` on device ``d`` the
  key ``fold_in(fold_in(run_key, s), d)`` with an int32 ``s``; a stream starts from
  ``fold_in(run_key, 2**31 + crc32(name) mod 2**31)``, a value no step takes, so no stream key
  is ever also a step's key.

  Args:
    run_key: the run's key (``state.rng``), on device or on the host.
    name: the stream's name, e.g. ``'ews/subnet'``.
    counter: the draw's number (a step, a search step), a Python or traced integer.
  """
  tag = (1 << 31) | (zlib.crc32(name.encode()) & 0x7FFFFFFF)
  return jax.random.fold_in(jax.random.fold_in(run_key, tag), counter)


def per_example_ce(logits, labels, label_smoothing: float = 0.0):
  """Softmax cross-entropy of each example with integer labels (optionally label-smoothed): [B]."""
  targets = jax.nn.one_hot(labels, logits.shape[-1])
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
  """Mean softmax cross-entropy with integer labels (optionally label-smoothed)."""
  return jnp.mean(per_example_ce(logits, labels, label_smoothing))


KL_REDUCTIONS = ('batchmean', 'mean')


def distillation_kl(teacher_logits, student_logits, temperature: float = 1.0,
                    reduction: str = 'batchmean'):
  """``KL(p_teacher || p_student)`` with the teacher side ``stop_gradient``-ed.

  ``batchmean``: ``T^2 (1/B) sum_i sum_k p_ik (log p_ik - log q_ik)`` with ``p = softmax(t/T)``
  and ``q = softmax(s/T)`` (PyTorch's ``reduction='batchmean'``, the KL divergence per example,
  times Hinton et al.'s ``T^2`` that keeps gradients on one scale); ``mean``: the same divided
  by the number of classes K (PyTorch's default ``reduction='mean'`` of ``nn.KLDivLoss``, an
  average over the B*K elements; the EWS authors' code uses it, so their lambda is in these
  units).
  Distillation moves the student towards the teacher, never the teacher towards the student.
  """
  if reduction not in KL_REDUCTIONS:
    raise ValueError(f'Unknown KL reduction {reduction!r}; valid: {KL_REDUCTIONS}.')
  t = jax.lax.stop_gradient(teacher_logits) / temperature
  log_p = jax.nn.log_softmax(t)
  log_q = jax.nn.log_softmax(student_logits / temperature)
  kl = jnp.mean(jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)) * temperature ** 2
  return kl / teacher_logits.shape[-1] if reduction == 'mean' else kl


def jensen_shannon_consistency(*logits):
  r"""AugMix's consistency loss over the predictions of several views of the same images.

  .. math:: \mathrm{JS}(p_1, \dots, p_n) = \frac{1}{n} \sum_i \mathrm{KL}(p_i \,\|\, M),\quad
            M = \mathrm{clip}\big(\tfrac{1}{n} \sum_i p_i,\ 10^{-7}, 1\big)

  averaged over the batch (the reference's ``kl_div(log M, p_i, reduction='batchmean')``);
  gradients flow through every view and through M.

  Args:
    *logits: [B, K] logits of each view (AugMix: clean, AugMix view 1, AugMix view 2).

  Returns:
    The scalar divergence.
  """
  log_ps = [jax.nn.log_softmax(z) for z in logits]
  log_m = jnp.log(jnp.clip(sum(jnp.exp(lp) for lp in log_ps) / len(log_ps), 1e-7, 1.0))
  kls = [jnp.mean(jnp.sum(jnp.exp(lp) * (lp - log_m), axis=-1)) for lp in log_ps]
  return sum(kls) / len(kls)


def augmix_loss(logits, labels, settings, label_smoothing: float = 0.0):
  """AugMix's training loss on the logits of ``settings.views(x)``.

  With the JSD term (``settings.num_views == 3``; logits ``[clean; view 1; view 2]``, 3B rows):
  ``CE(clean, y) + jsd_weight * JS(clean, view 1, view 2)``; without it, ``CE(view, y)``.

  Returns:
    ``(loss, clean_logits)``: the clean images' logits (the view's without the JSD term), [B, K].
  """
  if settings.num_views == 1:
    return cross_entropy(logits, labels, label_smoothing), logits
  clean, view1, view2 = jnp.split(logits, 3)
  loss = (cross_entropy(clean, labels, label_smoothing)
          + settings.jsd_weight * jensen_shannon_consistency(clean, view1, view2))
  return loss, clean


def natural_loss(logits, labels, augmix=None, label_smoothing: float = 0.0):
  """Natural training's loss: cross-entropy, or :func:`augmix_loss` when ``augmix`` (an
  ``AugMixSettings``) is set, on the logits of ``augmix.views(x)``.

  Returns:
    ``(loss, clean_logits)``.
  """
  if augmix is None:
    return cross_entropy(logits, labels, label_smoothing), logits
  return augmix_loss(logits, labels, augmix, label_smoothing)


def accuracy(logits, labels):
  return jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))


def synced_update(tx, grads, opt_state, params):
  """One step of optimizer ``tx`` on gradients averaged over the ``'batch'`` devices.

  Every parameter set a method trains (the network, AuxTrain's heads, EWS's controller, ANT's
  noise generator) steps through here, so that no device applies its own shard's gradient.

  Returns:
    ``(new_params, new_opt_state)``.
  """
  updates, opt_state = tx.update(jax.lax.pmean(grads, AXIS), opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def apply_gradients(state, grads, tx):
  """The network's :func:`synced_update`, counting the step."""
  params, opt_state = synced_update(tx, grads, state.opt_state, state.params)
  return state.replace(params=params, opt_state=opt_state, step=state.step + 1)


def gradient_step(state, tx, loss_fn, *, at_params=None):
  """One optimizer step on a loss whose training passes also produce new BN statistics.

  ``theta <- theta + tx(pmean_batch(grad loss(theta')))`` with ``theta' = at_params`` (default
  ``theta`` itself; AWP takes the gradient at adversarially perturbed weights), and
  ``state.batch_stats`` replaced by the statistics the passes returned: which passes may update
  them is decided inside ``loss_fn``, so this helper never changes the BN rule of a method.

  Args:
    state: the train state.
    tx: its optimizer.
    loss_fn: ``params -> (loss, (new_batch_stats, aux))``.
    at_params: where to take the gradient, if not at ``state.params``.

  Returns:
    ``(state, loss, aux)``, the state after the step.
  """
  params = state.params if at_params is None else at_params
  (loss, (stats, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  return apply_gradients(state, grads, tx).replace(batch_stats=stats), loss, aux


def single_pass_update(model, tx, state, x, loss_of_logits, dropout_rng):
  """One optimizer step on a loss of ONE training pass of ``x`` through ``'main'``.

  The pass normalises with the batch statistics of ``x`` and its running-statistics update
  becomes the new ``state.batch_stats`` (the BN rule of every single-domain method whose batch
  is one mixture: vanilla, GNT, ANT, partial mixup).

  Args:
    model: the backbone.
    tx: its optimizer.
    state: the train state.
    x: the (already composed) training images of this device.
    loss_of_logits: ``logits -> scalar loss``.
    dropout_rng: key for dropout.

  Returns:
    ``(state, loss, logits)``, the state after the step.
  """
  def loss_fn(params):
    logits, stats = apply_model(model, params, state.batch_stats, x, train=True, domain=MAIN,
                                rngs={'dropout': dropout_rng})
    return loss_of_logits(logits), (stats, logits)

  return gradient_step(state, tx, loss_fn)


def part_accuracies(logits, labels, parts):
  """Accuracy of consecutive parts of a composed batch, e.g. clean | noisy.

  Args:
    logits: [b, classes].
    labels: [b].
    parts: ``((name, size), ...)`` in batch order; the sizes sum to ``b``.

  Returns:
    ``{'accuracy': overall, '<name>_accuracy': ...}``; empty parts are left out, since the loop
    requires every metric to be finite.
  """
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  metrics = {'accuracy': jnp.mean(correct)}
  start = 0
  for name, size in parts:
    if size:
      metrics[f'{name}_accuracy'] = jnp.mean(correct[start:start + size])
    start += size
  return metrics


def local_batch_size(ctx) -> int:
  """Images of the global batch each device gets (its share composes its own mix)."""
  if ctx.mesh is None:
    return int(ctx.config.batch_size)
  return parallel.check_batch_size(int(ctx.config.batch_size), ctx.mesh)


def check_batch_parts(method: str, local_batch: int,
                      parts: Sequence[Tuple[str, float, int]]) -> None:
  """Checks the parts (clean | noisy, ...) that every device composes its share of a batch from.

  Each device rounds its own share, so a small share (a large batch over many devices is small
  per device) can lose a part or skew the mix, the same way on every device.

  Args:
    method: the method's name, for messages.
    local_batch: images per device.
    parts: ``(name, configured fraction, images per device)`` per part.

  Raises:
    ValueError: a part configured above 0 gets no image. (A mix 5 points or more off the
      configured fractions only warns.)
  """
  mix = ', '.join(f'{name} {k} ({fraction:.0%} asked)' for name, fraction, k in parts)
  missing = [name for name, fraction, k in parts if fraction > 0 and k == 0]
  if missing:
    raise ValueError(f'{method}: each device composes its {local_batch} images as {mix}, so the '
                     f'{" and ".join(missing)} part gets none. Use more images per device (a '
                     'larger batch_size, or fewer devices).')
  if any(abs(k / local_batch - fraction) >= 0.05 - 1e-9 for _, fraction, k in parts):
    logging.warning('%s: each device composes its %d images as %s; use more images per device '
                    'for the configured mix.', method, local_batch, mix)
