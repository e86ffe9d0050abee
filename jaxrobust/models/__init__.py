"""Backbones by name, and the one helper that runs a model on a named BatchNorm domain.

Running statistics are a dict keyed by domain, ``{'main': tree, 'aux': tree, ...}``, kept in the
train state. :func:`apply_model` hands the model only the named domain's tree, so a forward pass
can change that domain's statistics and no other; whether it changes them at all is the
caller's explicit choice (``update_stats``).
"""

import re
from typing import Any, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

from jaxrobust.models import resnet
from jaxrobust.models.layers import AUX, MAIN, DomainBatchNorm, Normalize  # noqa: F401

_WRN = re.compile(r'^wrn(\d+)_(\d+)$')


def names() -> list[str]:
  """Valid model names (WideResNet also accepts any ``wrn<depth>_<width>``)."""
  return sorted(resnet.ARCHITECTURES)


def architecture(name: str) -> dict:
  """ResNet keyword arguments for a model name; ValueError listing valid names if unknown."""
  if name in resnet.ARCHITECTURES:
    return dict(resnet.ARCHITECTURES[name])
  match = _WRN.match(name)
  if match:
    return resnet.wide_resnet(int(match.group(1)), int(match.group(2)))
  raise ValueError(f'Unknown model {name!r}. Valid models: {", ".join(names())} '
                   '(or wrn<depth>_<width>, e.g. wrn16_4).')


def create_model(name: str, *, num_classes: int, image_size: int = 32,
                 affine_domains: Sequence[str] = (), bn_axis_name: Optional[str] = None,
                 mean: Sequence[float] = resnet.CIFAR_MEAN, std: Sequence[float] = resnet.CIFAR_STD,
                 stem: str = 'auto', **overrides) -> resnet.ResNet:
  """Builds a backbone.

  Args:
    name: a model name (see :func:`names`).
    num_classes: number of logits.
    image_size: input height/width; with ``stem='auto'`` images of at most 64 pixels get the
      CIFAR stem and larger ones the ImageNet stem (unless the architecture fixes its stem).
    affine_domains: BatchNorm domains with their own affine parameters.
    bn_axis_name: mapped axis for synchronised BatchNorm, or None for per-device statistics.
    mean, std: input normalisation constants.
    stem: 'auto', 'cifar' or 'imagenet'.
    **overrides: other ``resnet.ResNet`` attributes (e.g. ``dropout_rate``, ``bn_momentum``).
  """
  kwargs = architecture(name)
  if stem not in ('auto', 'cifar', 'imagenet'):
    raise ValueError(f"Unknown stem {stem!r}; valid: 'auto', 'cifar', 'imagenet'.")
  if stem != 'auto':
    kwargs['stem'] = stem
  elif 'stem' not in kwargs:
    kwargs['stem'] = 'cifar' if image_size <= 64 else 'imagenet'
  kwargs.update(overrides)
  if kwargs.get('dropout_rate', 0.0) and kwargs.get('block', 'basic') != 'preact_basic':
    raise ValueError(f'dropout_rate={kwargs["dropout_rate"]!r}: model {name!r} has no dropout; '
                     f'only the pre-activation basic block has it (preact_resnet18, '
                     f'wrn<depth>_<width>). Use dropout_rate=0.')
  return resnet.ResNet(num_classes=num_classes, affine_domains=tuple(affine_domains),
                       bn_axis_name=bn_axis_name, mean=tuple(mean), std=tuple(std), **kwargs)


def init_variables(model, rng, image_shape: Tuple[int, int, int],
                   domains: Sequence[str] = (MAIN,)) -> Tuple[Any, dict]:
  """Initialises parameters and one running-statistics tree per BN domain.

  Returns:
    ``(params, batch_stats)`` with ``batch_stats = {domain: tree}``; every domain starts from
    the same initial statistics (mean 0, variance 1).
  """
  x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  variables = jax.jit(lambda r: model.init(r, x, train=False))(rng)
  stats = variables.get('batch_stats', {})
  # A copy per domain: aliased buffers must never appear twice in a donated state.
  return variables['params'], {d: jax.tree.map(jnp.copy, stats)
                               for d in dict.fromkeys((MAIN,) + tuple(domains))}


def apply_model(model, params, batch_stats: dict, x, *, train: bool, domain: str = MAIN,
                update_stats: Optional[bool] = None, rngs=None, **kwargs):
  """Runs ``model`` on ``x`` with the BatchNorm of ``domain``.

  Args:
    model: a backbone from :func:`create_model`.
    params: its parameters.
    batch_stats: running statistics keyed by domain.
    x: images in [0, 1], NHWC.
    train: BN normalises with batch statistics (True) or running statistics (False).
    domain: whose running statistics (and affine parameters, if the domain has its own) to use.
    update_stats: whether this pass updates ``batch_stats[domain]``; defaults to ``train``.
      Passes that craft attacks, train noise generators or evaluate subnets set it False.
    rngs: rngs for dropout.
    **kwargs: passed to the model (e.g. ``return_features=True``).

  Returns:
    ``(outputs, new_batch_stats)``; ``new_batch_stats`` is ``batch_stats`` itself unless the
    pass updated the named domain's statistics.
  """
  if domain not in batch_stats:
    raise ValueError(f'No BatchNorm statistics for domain {domain!r}; this state has '
                     f'{sorted(batch_stats)}. Declare the domain in the method\'s bn_domains.')
  update_stats = train if update_stats is None else update_stats
  if update_stats and not train:
    raise ValueError('update_stats=True needs train=True: eval passes never change statistics.')
  variables = {'params': params, 'batch_stats': batch_stats[domain]}
  if update_stats:
    out, mutated = model.apply(variables, x, train=True, domain=domain,
                               mutable=['batch_stats'], rngs=rngs, **kwargs)
    return out, {**batch_stats, domain: mutated['batch_stats']}
  out = model.apply(variables, x, train=train, domain=domain, rngs=rngs, **kwargs)
  return out, batch_stats


def export_params(params, affine_domains: Sequence[str] = ()):
  """Drops per-domain affine parameters (``scale_<d>``/``bias_<d>``), leaving the plain backbone."""
  drop = {f'{p}_{d}' for d in affine_domains for p in ('scale', 'bias')}

  def strip(tree):
    if isinstance(tree, dict) or hasattr(tree, 'items'):
      return {k: strip(v) for k, v in tree.items() if k not in drop}
    return tree
  return strip(params)


def count_params(params) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))
