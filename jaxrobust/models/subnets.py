"""Subnets of residual networks as arrays of 0/1 masks (EWS, Guo et al. 2022, section 3.1).

EWS (paper ``001``) builds a subnet of a network made of residual blocks by keeping, in every
block, a fraction ``rho`` of its *paths* and, in every layer, a fraction ``rho`` of its
*channels* (its Figure 3). For the blocks of :mod:`jaxrobust.models.resnet`:

* **paths**: every block has ``n = 2`` paths, the residual branch (index 0) and the shortcut
  (index 1; the identity or a 1x1 projection). A dropped path contributes nothing to the sum
  ``shortcut + residual``.
* **channels**: every convolution of a block (``conv1``, ``conv2`` [, ``conv3``] of the residual
  branch and ``shortcut_conv`` of a projection shortcut) is a layer whose output channels can be
  dropped: a dropped channel is zero wherever the rest of the network reads that layer's output
  (``mask * relu(bn(conv))`` before the next convolution; ``mask * bn(conv)`` / ``mask * conv``
  for the last layer of a post- / pre-activation branch and for the shortcut convolution). The
  stem, the identity shortcut and the classifier have no channel choices.

A subnet is the pytree ``{block_name: {'path': f32[2], 'conv1': f32[C1], ...}}`` passed to the
model as ``model.apply(variables, x, train=..., subnet=masks)`` (None = the full network). Masks
are data, not structure: one compiled function evaluates every subnet, and a batch of subnets is
the same pytree with a leading axis.

**How many to keep.** A block/layer with ``C`` candidates keeps ``m = floor(rho * C + 1/2)``
(``rho * C`` rounded to the nearest integer), at least 1. For paths (``C = 2``) this keeps one
path whenever ``rho < 3/4`` -- in particular for every ``rho <= 1/2``, where rounding *up*
(``ceil(2 rho)``) would keep both paths for any ``rho > 1/2`` and make the subnet's path choice
vacuous. For channels, ``m`` is further capped at ``C - 1`` (when ``C >= 2``), so that for every
``rho < 1`` each layer really drops a channel even where the path rounding keeps both paths
(``rho >= 3/4``) or ``C`` is small; a subnet with ``rho < 1`` is therefore never the full network.

**Decision order** (the controller's slots, paper section 3.2 and supplementary A): block by
block, first the block's paths, then the channels of each of its layers (residual branch in
order, then the shortcut convolution). Every layer gets a channel decision whether or not its
path is kept (fixed shapes); the channels of a dropped path simply have no effect.
"""

import dataclasses
import math
import re
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

PATH_KEY = 'path'
RESIDUAL, SHORTCUT = 0, 1
NUM_PATHS = 2
SHORTCUT_LAYER = 'shortcut_conv'

_BLOCK = re.compile(r'^stage(\d+)_block(\d+)$')
_CONV = re.compile(r'^conv(\d+)$')

Masks = Dict[str, Dict[str, jax.Array]]


def num_kept(rho: float, num_candidates: int, *, keep_one_out: bool = False) -> int:
  """How many of ``num_candidates`` a subnet of width ``rho`` keeps (see module docstring).

  Args:
    rho: subnet width in (0, 1].
    num_candidates: ``C >= 1`` paths or channels.
    keep_one_out: cap at ``C - 1`` when ``C >= 2`` and ``rho < 1`` (channels).

  Returns:
    ``m = clip(floor(rho * C + 1/2), 1, C)`` (or ``C - 1`` with ``keep_one_out``).
  """
  check_rho(rho)
  c = int(num_candidates)
  if c < 1:
    raise ValueError(f'num_candidates must be >= 1, got {num_candidates}.')
  m = min(max(int(math.floor(rho * c + 0.5)), 1), c)
  if keep_one_out and rho < 1 and c >= 2:
    m = min(m, c - 1)
  return m


def check_rho(rho) -> float:
  """ValueError unless ``0 < rho <= 1``."""
  if not isinstance(rho, (int, float)) or not 0.0 < float(rho) <= 1.0:
    raise ValueError(f'rho (subnet width) must be in (0, 1], got {rho!r}.')
  return float(rho)


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """The choices of one residual block.

  Attributes:
    name: the block's module name, e.g. ``'stage2_block1'``.
    layers: ``(layer_name, num_channels)`` of its maskable layers: residual-branch convolutions
      in order, then ``'shortcut_conv'`` if the shortcut is a projection.
  """
  name: str
  layers: Tuple[Tuple[str, int], ...]

  @property
  def has_projection(self) -> bool:
    return any(n == SHORTCUT_LAYER for n, _ in self.layers)

  @property
  def residual_layers(self) -> Tuple[str, ...]:
    return tuple(n for n, _ in self.layers if n != SHORTCUT_LAYER)


@dataclasses.dataclass(frozen=True)
class SubnetSpace:
  """All subnets of width ``rho`` of one network, with the controller's slot layout.

  Build it with :func:`subnet_space`. Hashable (a valid static argument / module attribute).

  Attributes:
    blocks: the residual blocks in forward order.
    rho: the subnet width.
  """
  blocks: Tuple[BlockSpec, ...]
  rho: float

  def __post_init__(self):
    check_rho(self.rho)
    if not self.blocks:
      raise ValueError('A subnet space needs at least one residual block.')

  # -- the slot layout -------------------------------------------------------------------
  @property
  def keys(self) -> Tuple[Tuple[str, str], ...]:
    """``(block_name, key)`` of every slot in decision order (``key`` = 'path' or a layer)."""
    out = []
    for b in self.blocks:
      out.append((b.name, PATH_KEY))
      out.extend((b.name, n) for n, _ in b.layers)
    return tuple(out)

  @property
  def slots(self) -> Tuple[Tuple[int, int], ...]:
    """``(num_candidates, num_kept)`` per slot, in decision order (``SubnetController.slots``)."""
    out = []
    for b in self.blocks:
      out.append((NUM_PATHS, num_kept(self.rho, NUM_PATHS)))
      out.extend((c, num_kept(self.rho, c, keep_one_out=True)) for _, c in b.layers)
    return tuple(out)

  def block_names(self) -> Tuple[str, ...]:
    return tuple(b.name for b in self.blocks)

  # -- conversions -----------------------------------------------------------------------
  def from_slot_masks(self, slot_masks: Sequence[jax.Array]) -> Masks:
    """Per-slot masks (e.g. ``ControllerSample.masks``, any leading axes) -> the mask pytree."""
    keys = self.keys
    if len(slot_masks) != len(keys):
      raise ValueError(f'Got {len(slot_masks)} slot masks; this space has {len(keys)} slots.')
    out: Masks = {b.name: {} for b in self.blocks}
    for (block, key), m in zip(keys, slot_masks):
      out[block][key] = jnp.asarray(m, jnp.float32)
    return out

  def to_slot_masks(self, masks: Masks) -> Tuple[jax.Array, ...]:
    """The inverse of :meth:`from_slot_masks`."""
    return tuple(masks[block][key] for block, key in self.keys)

  # -- particular subnets ----------------------------------------------------------------
  def full(self, batch_shape: Tuple[int, ...] = ()) -> Masks:
    """All-ones masks: the full network expressed as a subnet (for tests and mixing)."""
    return self.from_slot_masks([jnp.ones(batch_shape + (c,), jnp.float32)
                                 for c, _ in self.slots])

  def random(self, rng: jax.Array) -> Masks:
    """A uniformly random subnet: per slot a uniform subset of the slot's ``m`` (jittable)."""
    keys = jax.random.split(rng, len(self.slots))
    return self.from_slot_masks([_top_m(jax.random.uniform(k, (c,)), m)
                                 for k, (c, m) in zip(keys, self.slots)])

  def random_batch(self, rng: jax.Array, num: int) -> Masks:
    """``num`` independent uniformly random subnets (leading axis [num])."""
    return jax.vmap(self.random)(jax.random.split(rng, num))

  def random_in_block(self, rng: jax.Array, block: str) -> Masks:
    """A random subnet inside ``block`` only; every other block is full (paper Figure 7)."""
    self._check_block(block)
    full, rand = self.full(), self.random(rng)
    return {b: (rand[b] if b == block else full[b]) for b in full}

  def drop_residual(self, block: str) -> Masks:
    """The full network without ``block``'s residual branch (only its shortcut is kept)."""
    self._check_block(block)
    masks = self.full()
    masks[block][PATH_KEY] = jnp.array([0.0, 1.0], jnp.float32)
    return masks

  def lowest_l1(self, params) -> Masks:
    """The subnet of lowest-L1-norm paths and channels (paper Table 5's "L1-norm selection").

    Channels: the L1 norm of each output channel's convolution kernel ``sum |W[..., c]|``
    (the filter-pruning score of Li et al. 2017); the ``m`` smallest are kept. Paths: the mean
    absolute weight of the convolutions on the path; the identity shortcut, which has no
    weights, scores as the identity matrix does (``1 / C``). Jittable.

    Args:
      params: the backbone's parameters.
    """
    slot_masks = []
    for b in self.blocks:
      p = params[b.name]
      residual = jnp.mean(jnp.stack([jnp.mean(jnp.abs(p[n]['kernel']))
                                     for n in b.residual_layers]))
      if b.has_projection:
        shortcut = jnp.mean(jnp.abs(p[SHORTCUT_LAYER]['kernel']))
      else:
        shortcut = jnp.asarray(1.0 / dict(b.layers)[b.residual_layers[-1]], jnp.float32)
      slot_masks.append(_top_m(-jnp.stack([residual, shortcut]), num_kept(self.rho, NUM_PATHS)))
      for name, c in b.layers:
        l1 = jnp.sum(jnp.abs(p[name]['kernel']), axis=tuple(range(p[name]['kernel'].ndim - 1)))
        slot_masks.append(_top_m(-l1, num_kept(self.rho, c, keep_one_out=True)))
    return self.from_slot_masks(slot_masks)

  def _check_block(self, block: str) -> None:
    if block not in self.block_names():
      raise ValueError(f'Unknown block {block!r}; valid blocks: {list(self.block_names())}.')


def _top_m(scores: jax.Array, m: int) -> jax.Array:
  """0/1 float mask of the ``m`` largest ``scores``."""
  _, idx = jax.lax.top_k(scores, m)
  return jnp.zeros(scores.shape, jnp.float32).at[idx].set(1.0)


def blocks_from_params(params) -> Tuple[BlockSpec, ...]:
  """Reads the residual blocks and their layer widths from a ResNet parameter tree.

  Args:
    params: parameters (or their ``ShapeDtypeStruct``s) of a :class:`resnet.ResNet`.

  Returns:
    The blocks in forward order (stage-major), each with its maskable layers.
  """
  names = sorted((n for n in params if _BLOCK.match(n)),
                 key=lambda n: tuple(int(g) for g in _BLOCK.match(n).groups()))
  if not names:
    raise ValueError(f'No residual blocks (stage<i>_block<j>) in parameters with keys '
                     f'{sorted(params)[:10]}.')
  blocks = []
  for name in names:
    p = params[name]
    convs = sorted((k for k in p if _CONV.match(k)), key=lambda k: int(_CONV.match(k).group(1)))
    layers = [(k, int(p[k]['kernel'].shape[-1])) for k in convs]
    if SHORTCUT_LAYER in p:
      layers.append((SHORTCUT_LAYER, int(p[SHORTCUT_LAYER]['kernel'].shape[-1])))
    blocks.append(BlockSpec(name=name, layers=tuple(layers)))
  return tuple(blocks)


def subnet_space(model, rho: float = 0.5, image_shape: Tuple[int, int, int] = (32, 32, 3),
                 params: Optional[Any] = None) -> SubnetSpace:
  """The subnet space of a backbone.

  Args:
    model: a :class:`jaxrobust.models.resnet.ResNet` (any block type).
    rho: subnet width in (0, 1] (0.5 in the paper).
    image_shape: an input shape to trace the model's parameter shapes with (channel counts do
      not depend on it).
    params: the parameters, if at hand (skips tracing).
  """
  check_rho(rho)
  if params is None:
    x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))['params']
  return SubnetSpace(blocks=blocks_from_params(params), rho=float(rho))


def kept_fraction(space: SubnetSpace, masks: Masks) -> Dict[str, jax.Array]:
  """Fractions of kept paths and channels of a subnet (diagnostics; works on batches too)."""
  paths = jnp.stack([jnp.mean(masks[b.name][PATH_KEY], -1) for b in space.blocks], -1)
  chans = [masks[b.name][n] for b in space.blocks for n, _ in b.layers]
  total = sum(c.shape[-1] for c in chans)
  return {'paths': jnp.mean(paths, -1),
          'channels': sum(jnp.sum(c, -1) for c in chans) / total}
