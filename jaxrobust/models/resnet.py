"""ResNet, pre-activation ResNet and WideResNet backbones with domain-aware BatchNorm.

Every model maps float pixels in [0, 1] (NHWC) to logits; mean/std normalisation is its first
layer. ``__call__(x, *, train, domain='main', return_features=False, subnet=None)``: ``domain``
picks the affine parameters of every BatchNorm (its running statistics are chosen by the caller,
see ``jaxrobust.models.apply_model``); ``return_features=True`` returns a dict with the last
feature map (``'features'``, before pooling), the pooled features (``'pooled'``) and
``'logits'``, which is where auxiliary heads attach.

``subnet`` (EWS, see ``jaxrobust.models.subnets``) is None for the full network or a dict
``{block_name: {'path': [2], '<layer>': [C], ...}}`` of 0/1 float arrays: ``path`` multiplies the
residual branch (index 0) and the shortcut (index 1) of the block; a layer's mask multiplies that
layer's output channels where the rest of the network reads them (after the layer's BN/ReLU when
the block applies them before the next convolution, i.e. ``mask * relu(bn(conv(x)))``; after
``bn(conv(x))`` for the last layer of a post-activation branch and after ``conv(x)`` for the last
layer of a pre-activation branch or shortcut). Masks are arrays, so one compiled function serves
every subnet; with ``subnet=None`` no multiplication happens at all.

Architectures (parameter counts are tested against the published ones):
* CIFAR stem: 3x3 conv, stride 1, no max-pool (ResNet-18 on CIFAR-10: 11,173,962 params).
* ImageNet stem: 7x7 conv, stride 2, 3x3 max-pool (ResNet-50: 25,557,032 params; stride on the
  3x3 conv of the bottleneck, "ResNet v1.5").
* Pre-activation blocks (He et al. 2016b) with a final BN-ReLU; WideResNet-d-k (Zagoruyko &
  Komodakis 2016): pre-activation basic blocks, widths 16k/32k/64k, (d-4)/6 blocks per group
  (WRN-28-10: 36,479,194 params).
* Shortcuts are 1x1 convolutions (+BN for post-activation nets) whenever shape changes.

Known differences from the PyTorch references, kept so that saved runs keep their numbers:
* Strided 3x3 convolutions pad SAME, i.e. (0, 1) on even sizes (as flax's ImageNet example),
  where PyTorch pads (1, 1): the branch's windows centre on odd pixels while the 1x1 stride-2
  shortcut reads even ones. Parameter counts are unchanged; the stem's 7x7 is padded (3, 3).
* The classifier is flax's ``Dense`` default (LeCun normal, std 1/sqrt(fan_in), zero bias);
  PyTorch's ``Linear`` draws U(-1/sqrt(fan_in), 1/sqrt(fan_in)), sqrt(3) times smaller.
"""

import functools
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from jaxrobust.models.layers import MAIN, Conv, DomainBatchNorm, Normalize

conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')  # He init (torchvision)

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def _mask(x, subnet, key):
  """``x * subnet[key]`` (channel mask, broadcast over N, H, W); ``x`` itself for the full net."""
  return x if subnet is None else x * subnet[key]


def _paths(residual, shortcut, subnet):
  """``residual + shortcut``, each multiplied by its path mask ``subnet['path']`` if given."""
  if subnet is None:
    return shortcut + residual
  return shortcut * subnet['path'][1] + residual * subnet['path'][0]


def _bound_norm(norm: Callable, train: bool, domain: str) -> Callable:
  """``bn(name=...)(x)`` creates the named BN layer and applies it in the given mode/domain."""
  def make(name):
    layer = norm(name=name)
    return lambda x: layer(x, train=train, domain=domain)
  return make


class BasicBlock(nn.Module):
  """Post-activation basic block: conv3x3-BN-ReLU-conv3x3-BN, + shortcut, ReLU."""
  features: int
  strides: int
  conv: Callable
  norm: Callable
  expansion = 1

  @nn.compact
  def __call__(self, x, *, train, domain, subnet=None):
    bn = _bound_norm(self.norm, train, domain)
    y = self.conv(self.features, (3, 3), self.strides, name='conv1')(x)
    y = _mask(nn.relu(bn(name='bn1')(y)), subnet, 'conv1')
    y = self.conv(self.features, (3, 3), name='conv2')(y)
    y = _mask(bn(name='bn2')(y), subnet, 'conv2')
    if x.shape[-1] != self.features or self.strides != 1:
      x = self.conv(self.features, (1, 1), self.strides, name='shortcut_conv')(x)
      x = _mask(bn(name='shortcut_bn')(x), subnet, 'shortcut_conv')
    return nn.relu(_paths(y, x, subnet))


class Bottleneck(nn.Module):
  """Post-activation bottleneck: 1x1, 3x3 (strided), 1x1 (x4), each with BN."""
  features: int
  strides: int
  conv: Callable
  norm: Callable
  expansion = 4

  @nn.compact
  def __call__(self, x, *, train, domain, subnet=None):
    bn = _bound_norm(self.norm, train, domain)
    out = self.features * self.expansion
    y = nn.relu(bn(name='bn1')(self.conv(self.features, (1, 1), name='conv1')(x)))
    y = _mask(y, subnet, 'conv1')
    y = nn.relu(bn(name='bn2')(self.conv(self.features, (3, 3), self.strides, name='conv2')(y)))
    y = _mask(y, subnet, 'conv2')
    y = _mask(bn(name='bn3')(self.conv(out, (1, 1), name='conv3')(y)), subnet, 'conv3')
    if x.shape[-1] != out or self.strides != 1:
      x = bn(name='shortcut_bn')(self.conv(out, (1, 1), self.strides, name='shortcut_conv')(x))
      x = _mask(x, subnet, 'shortcut_conv')
    return nn.relu(_paths(y, x, subnet))


class PreActBlock(nn.Module):
  """Pre-activation basic block (also WideResNet's): BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3."""
  features: int
  strides: int
  conv: Callable
  norm: Callable
  dropout_rate: float = 0.0
  expansion = 1

  @nn.compact
  def __call__(self, x, *, train, domain, subnet=None, dropout=None):
    bn = _bound_norm(self.norm, train, domain)
    out = nn.relu(bn(name='bn1')(x))
    shortcut = x
    if x.shape[-1] != self.features or self.strides != 1:
      shortcut = self.conv(self.features, (1, 1), self.strides, name='shortcut_conv')(out)
      shortcut = _mask(shortcut, subnet, 'shortcut_conv')
    y = self.conv(self.features, (3, 3), self.strides, name='conv1')(out)
    y = _mask(nn.relu(bn(name='bn2')(y)), subnet, 'conv1')
    if self.dropout_rate > 0:
      y = nn.Dropout(self.dropout_rate, deterministic=not (train if dropout is None else dropout))(y)
    y = _mask(self.conv(self.features, (3, 3), name='conv2')(y), subnet, 'conv2')
    return _paths(y, shortcut, subnet)


class PreActBottleneck(nn.Module):
  """Pre-activation bottleneck: BN-ReLU-1x1, BN-ReLU-3x3 (strided), BN-ReLU-1x1 (x4)."""
  features: int
  strides: int
  conv: Callable
  norm: Callable
  expansion = 4

  @nn.compact
  def __call__(self, x, *, train, domain, subnet=None):
    bn = _bound_norm(self.norm, train, domain)
    out_features = self.features * self.expansion
    out = nn.relu(bn(name='bn1')(x))
    shortcut = x
    if x.shape[-1] != out_features or self.strides != 1:
      shortcut = self.conv(out_features, (1, 1), self.strides, name='shortcut_conv')(out)
      shortcut = _mask(shortcut, subnet, 'shortcut_conv')
    y = self.conv(self.features, (1, 1), name='conv1')(out)
    y = _mask(nn.relu(bn(name='bn2')(y)), subnet, 'conv1')
    y = self.conv(self.features, (3, 3), self.strides, name='conv2')(y)
    y = _mask(nn.relu(bn(name='bn3')(y)), subnet, 'conv2')
    y = _mask(self.conv(out_features, (1, 1), name='conv3')(y), subnet, 'conv3')
    return _paths(y, shortcut, subnet)


BLOCKS = {
    'basic': BasicBlock,
    'bottleneck': Bottleneck,
    'preact_basic': PreActBlock,
    'preact_bottleneck': PreActBottleneck,
}


class ResNet(nn.Module):
  """A residual network: stem, stages of blocks, global average pooling, linear classifier.

  Attributes:
    num_classes: output logits.
    stage_sizes: blocks per stage.
    widths: base width of each stage (a bottleneck outputs 4x this).
    block: one of ``BLOCKS``.
    stem: ``'cifar'`` (3x3 conv, stride 1) or ``'imagenet'`` (7x7/2 conv + 3x3/2 max-pool).
    stem_width: output channels of the stem convolution.
    dropout_rate: dropout inside pre-activation basic blocks (WideResNet).
    bn_momentum, bn_axis_name, affine_domains: passed to every ``DomainBatchNorm``.
    mean, std: per-channel input normalisation constants.
  """
  num_classes: int
  stage_sizes: Sequence[int]
  widths: Sequence[int]
  block: str = 'basic'
  stem: str = 'cifar'
  stem_width: int = 64
  dropout_rate: float = 0.0
  bn_momentum: float = 0.9
  bn_axis_name: Optional[str] = None
  affine_domains: Tuple[str, ...] = ()
  mean: Sequence[float] = CIFAR_MEAN
  std: Sequence[float] = CIFAR_STD

  @property
  def preact(self) -> bool:
    return self.block.startswith('preact')

  @nn.compact
  def __call__(self, x, *, train: bool, domain: str = MAIN, return_features: bool = False,
               subnet: Optional[dict] = None, dropout: Optional[bool] = None):
    """Logits (or features) of ``x``.

    Args:
      x: images in [0, 1], NHWC.
      train: BatchNorm with batch statistics (True) or running statistics (False).
      domain: whose BatchNorm statistics and affine parameters to use.
      return_features: return ``{'features', 'pooled', 'logits'}``.
      subnet: per-block masks of a subnet (``jaxrobust.models.subnets``).
      dropout: whether dropout is active; defaults to ``train``. Evaluation passes that use batch
        statistics (subnet analysis, EWS's search rewards) turn it off.
    """
    conv = functools.partial(Conv, use_bias=False, kernel_init=conv_init, padding='SAME')
    norm = functools.partial(DomainBatchNorm, momentum=self.bn_momentum,
                             axis_name=self.bn_axis_name, affine_domains=tuple(self.affine_domains))
    bn = _bound_norm(norm, train, domain)
    block_cls = BLOCKS[self.block]
    x = Normalize(self.mean, self.std)(x)
    if self.stem == 'imagenet':
      x = conv(self.stem_width, (7, 7), 2, padding=[(3, 3), (3, 3)], name='stem_conv')(x)
    else:
      x = conv(self.stem_width, (3, 3), name='stem_conv')(x)
    if not self.preact:  # pre-activation: the first block's BN-ReLU normalises the stem (after
      # the max-pool, which commutes with an increasing per-channel BN-ReLU: He et al.'s
      # conv-BN-ReLU-pool with a first block without pre-activation, but for BN's statistics)
      x = nn.relu(bn(name='stem_bn')(x))
    if self.stem == 'imagenet':
      x = nn.max_pool(x, (3, 3), (2, 2), padding=[(1, 1), (1, 1)])
    # Only the pre-activation (wide) block has dropout, as in WRN.
    has_dropout = block_cls is PreActBlock
    block_kwargs = {'dropout_rate': self.dropout_rate} if has_dropout else {}
    call_kwargs = {'dropout': dropout} if has_dropout else {}
    for i, (num_blocks, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        name = f'stage{i + 1}_block{j + 1}'
        x = block_cls(width, strides, conv, norm, name=name, **block_kwargs)(
            x, train=train, domain=domain, subnet=None if subnet is None else subnet[name],
            **call_kwargs)
    if self.preact:
      x = nn.relu(bn(name='final_bn')(x))
    features = x
    pooled = jnp.mean(features, axis=(1, 2))
    logits = nn.Dense(self.num_classes, name='classifier')(pooled)
    if return_features:
      return {'features': features, 'pooled': pooled, 'logits': logits}
    return logits


def _wrn(depth: int, width: int, **kw) -> dict:
  if depth < 10 or (depth - 4) % 6:
    raise ValueError(f'WideResNet depth must be 6n+4 with n >= 1 (e.g. 10, 16, 22, 28, 34, 40), '
                     f'got {depth}.')
  if width < 1:
    raise ValueError(f'WideResNet width must be an integer >= 1, got {width}.')
  n = (depth - 4) // 6
  return dict(stage_sizes=(n, n, n), widths=(16 * width, 32 * width, 64 * width),
              block='preact_basic', stem='cifar', stem_width=16, **kw)


# name -> (ResNet keyword arguments); the stem is chosen per dataset unless fixed here.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    # Tiny and CPU-sized networks for tests and small-scale experiments.
    'resnet_tiny': dict(stage_sizes=(1, 1), widths=(8, 16), stem_width=8),
    'resnet8': dict(stage_sizes=(1, 1, 1), widths=(16, 32, 64), stem_width=16, stem='cifar'),
    'resnet8_wide': dict(stage_sizes=(1, 1, 1), widths=(32, 64, 128), stem_width=32, stem='cifar'),
    'resnet20': dict(stage_sizes=(3, 3, 3), widths=(16, 32, 64), stem_width=16, stem='cifar'),
    # He et al. 2016 family.
    'resnet18': dict(stage_sizes=(2, 2, 2, 2), widths=(64, 128, 256, 512)),
    'resnet34': dict(stage_sizes=(3, 4, 6, 3), widths=(64, 128, 256, 512)),
    'resnet50': dict(stage_sizes=(3, 4, 6, 3), widths=(64, 128, 256, 512), block='bottleneck'),
    'resnet101': dict(stage_sizes=(3, 4, 23, 3), widths=(64, 128, 256, 512), block='bottleneck'),
    'preact_resnet18': dict(stage_sizes=(2, 2, 2, 2), widths=(64, 128, 256, 512),
                            block='preact_basic'),
    'preact_resnet50': dict(stage_sizes=(3, 4, 6, 3), widths=(64, 128, 256, 512),
                            block='preact_bottleneck'),
    'wrn28_10': _wrn(28, 10),
    'wrn34_10': _wrn(34, 10),
}


def wide_resnet(depth: int, width: int, **kwargs) -> dict:
  """Keyword arguments of WideResNet-depth-width (for custom depth/width from a config)."""
  return _wrn(depth, width, **kwargs)
