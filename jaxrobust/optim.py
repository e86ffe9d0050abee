"""Optimizers and learning-rate schedules from a config."""

import optax

OPTIMIZERS = ('sgd', 'adam', 'adamw')
SCHEDULES = ('constant', 'cosine', 'step', 'onecycle')


def learning_rate_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  """Learning rate per step.

  Config keys: ``learning_rate`` (peak), ``lr_schedule`` in SCHEDULES, ``warmup_epochs`` (linear
  warm-up from 0), ``num_epochs``; ``lr_boundaries`` (epochs) and ``lr_decay_factor`` for
  ``'step'``. ``'onecycle'``: linear up to the peak over ``warmup_epochs`` (default 30% of the
  run if 0), then linear down to 0 — fast convergence for short CPU-sized runs.
  """
  total = max(1, int(config.num_epochs * steps_per_epoch))
  warmup = int(config.get('warmup_epochs', 0) * steps_per_epoch)
  peak = config.learning_rate
  kind = config.get('lr_schedule', 'cosine')
  if kind not in SCHEDULES:
    raise ValueError(f'Unknown lr_schedule {kind!r}; valid: {", ".join(SCHEDULES)}.')
  if kind == 'onecycle':
    warmup = warmup or int(0.3 * total)
    return optax.join_schedules(
        [optax.linear_schedule(peak / 25, peak, max(1, warmup)),
         optax.linear_schedule(peak, 0.0, max(1, total - warmup))], [warmup])
  if kind == 'constant':
    main = optax.constant_schedule(peak)
  elif kind == 'cosine':
    main = optax.cosine_decay_schedule(peak, max(1, total - warmup))
  else:
    boundaries = [int(e * steps_per_epoch) - warmup for e in config.get('lr_boundaries', ())]
    main = optax.piecewise_constant_schedule(
        peak, {b: config.get('lr_decay_factor', 0.1) for b in boundaries if b > 0})
  if warmup:
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), main], [warmup])
  return main


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD (momentum, Nesterov), Adam or AdamW with weight decay and an lr schedule.

  ``weight_decay`` for SGD/Adam is L2 regularisation added to the gradient (PyTorch's
  ``weight_decay``), applied to every parameter as the papers' reference code does; AdamW uses
  decoupled decay. ``grad_clip_norm`` > 0 clips the global gradient norm.
  """
  name = config.get('optimizer', 'sgd')
  if name not in OPTIMIZERS:
    raise ValueError(f'Unknown optimizer {name!r}; valid: {", ".join(OPTIMIZERS)}.')
  lr = learning_rate_schedule(config, steps_per_epoch)
  wd = config.get('weight_decay', 0.0)
  parts = []
  if config.get('grad_clip_norm', 0.0):
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  if name == 'adamw':
    parts.append(optax.adamw(lr, weight_decay=wd))
  else:
    if wd:
      parts.append(optax.add_decayed_weights(wd))
    if name == 'sgd':
      parts.append(optax.sgd(lr, momentum=config.get('momentum', 0.9) or None,
                             nesterov=config.get('nesterov', False)))
    else:
      parts.append(optax.adam(lr))
  return optax.chain(*parts)
