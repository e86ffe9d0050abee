"""The interface between the training loop and a method."""

import dataclasses
from typing import Any, Callable, Iterator, Optional

import jax
from absl import logging

from jaxrobust import models
from jaxrobust.models import MAIN


@dataclasses.dataclass
class Context:
  """What a method may use, handed to :meth:`Method.setup` by the loop.

  Attributes:
    config: the run's ConfigDict.
    model: the backbone (``jaxrobust.models.create_model``).
    tx: the optax optimizer of the backbone's parameters.
    info: ``jaxrobust.data.DatasetInfo``.
    mesh: the 1-D device mesh (axis ``'batch'``).
    steps_per_epoch: optimizer steps per epoch.
    total_steps: optimizer steps of the whole run.
    train_batches: ``f(num_batches, seed) -> iterator`` of global (sharded) training batches,
      for procedures outside the step such as EWS's subnet search.
  """
  config: Any
  model: Any
  tx: Any
  info: Any
  mesh: Any
  steps_per_epoch: int
  total_steps: int
  train_batches: Optional[Callable[[int, int], Iterator[dict]]] = None


@dataclasses.dataclass(frozen=True)
class Hook:
  """A host-side procedure the loop runs every ``every_steps`` steps: ``state = fn(state)``.

  It prepares the steps that follow (a search, a restart), so the loop never runs it after the
  run's last step.
  """
  every_steps: int
  fn: Callable[[Any], Any]
  name: str = ''


class Method:
  """Base class of training methods.

  Subclasses implement :meth:`train_step` (and override the other methods as needed). The
  step is the *per-device* body: it runs under ``shard_map`` on this device's shard of the
  global batch, must average its gradients with ``lax.pmean(grads, 'batch')`` (see
  ``common.apply_gradients``) and returns the new state and scalar metrics. The loop averages
  metrics over devices, and averages BN running statistics unless BN is synchronised.
  """
  name: str = ''
  # Whether the step trains on AugMix views when ``config.augmix`` is True
  # (``jaxrobust.augmentations.AugMixSettings``); other methods reject the key.
  supports_augmix: bool = False
  # Whether the method's paper fine-tunes a pretrained network on ImageNet (GNT, ANT): such a
  # run without ``init_from`` trains from random weights, and the log says so.
  fine_tunes_on_imagenet: bool = False
  # The defaults of the keys the method reads through :meth:`option` (its module's DEFAULTS).
  defaults: dict = {}

  def __init__(self, config):
    self.config = config
    self.ctx: Optional[Context] = None
    # every method's cross-entropy targets (range checked by train.validate_config)
    self.label_smoothing = float(config.get('label_smoothing', 0.0))
    if config.get('augmix', False) and not self.supports_augmix:
      from jaxrobust import methods  # pylint: disable=g-import-not-at-top
      able = ', '.join(repr(n) for n in methods.names() if methods.get(n).supports_augmix)
      raise ValueError(f'augmix=True: method {self.name!r} does not train on AugMix views; the '
                       f'methods that do are {able} (natural training).')
    self.validate()

  def option(self, key: str):
    """``config[key]``, or this method's default for it (declared in ``defaults``)."""
    if key not in self.defaults:
      raise KeyError(f'method {self.name!r} reads option {key!r} but declares no default for it '
                     f'in its class attribute `defaults`.')
    return self.config.get(key, self.defaults[key])

  # -- the shape of the state ------------------------------------------------------------
  def bn_domains(self) -> tuple[str, ...]:
    """BatchNorm domains whose running statistics this method keeps."""
    return (MAIN,)

  def affine_domains(self) -> tuple[str, ...]:
    """BatchNorm domains with their own affine parameters."""
    return ()

  def eval_domains(self) -> tuple[str, ...]:
    """Domains the periodic clean evaluation reports (the first is the headline one)."""
    return (MAIN,)

  def validate(self) -> None:
    """Raises ValueError for an impossible config, before anything is compiled."""

  def setup(self, ctx: Context) -> None:
    self.ctx = ctx
    if (self.fine_tunes_on_imagenet and ctx.info is not None and ctx.info.image_shape[0] > 64
        and not ctx.config.get('init_from', '')):
      logging.warning('%s fine-tunes a pretrained network in its paper, but init_from is empty: '
                      'this run trains from random weights. Set --config.init_from=<a trained '
                      'vanilla run> to fine-tune it.', self.name or type(self).__name__)

  @property
  def model(self):
    return self.ctx.model

  @property
  def tx(self):
    return self.ctx.tx

  def forward_backward_passes(self) -> float:
    """Theoretical cost of one training step in forward+backward passes of the batch.

    Vanilla training is 1; a forward pass alone counts 1/3. Periodic hooks (searches,
    generator restarts) are not included. ``benchmarks/throughput.py`` prints it next to the
    measured cost relative to vanilla.
    """
    return 1.0

  def init_extras(self, rng: jax.Array, params, batch_stats) -> Any:
    """Method-owned state (heads, generators, controllers); ``{}`` if none."""
    del rng, params, batch_stats
    return {}

  def hooks(self) -> list[Hook]:
    return []

  def train_step(self, state, batch: dict, rng: jax.Array):
    """Per-device step: ``(state, batch, rng) -> (state, metrics)``."""
    raise NotImplementedError

  def export(self, state) -> dict:
    """The variables of the deployable model: ``{'params', 'batch_stats'}`` of the main path."""
    return {'params': models.export_params(state.params, self.affine_domains()),
            'batch_stats': state.batch_stats[MAIN]}
