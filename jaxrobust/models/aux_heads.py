"""Auxiliary classifiers of Auxiliary Training (Zhang et al., CVPR 2020, section 3.3).

One auxiliary classifier per training corruption sits on the backbone's last feature map (what
``model.apply(..., return_features=True)['features']`` returns, before pooling):

    mask   = sigmoid(BN(ConvT3x3(relu(BN(Conv3x3(f))))))          attention module
    h      = mask * f
    h      = relu(BN(Conv1x1(h)))  -> relu(BN(Conv3x3(.))) -> relu(BN(Conv1x1(.)))   bottleneck
    logits = Dense(global_average_pool(h))                         FC shaped like the primary FC

The attention module is "one convolutional layer and one deconvolutional layer" and the bottleneck
"1x1, 3x3, 1x1 convolutional layers" (the paper's section 3.3, after SCAN's shallow classifiers);
widths follow the released code (attention keeps C channels, the bottleneck squeezes to C/2 and
expands back to C), so the FC is ``C -> num_classes`` like the backbone's ``classifier``. That
equality of shapes is what the L2 weight-merging term (Eq. 6) needs.

Differences from the released code, and why:
* The bottleneck's 3x3 convolution uses SAME padding (the released code has none, shrinking a 4x4
  CIFAR map to 2x2); with SAME the head works on any feature-map size, including the 1x1 maps of
  small images through an ImageNet stem.
* Convolutions have no bias (each is followed by BatchNorm, which has its own shift).

Heads exist only during training and always normalise with the statistics of the batch they see
(:class:`BatchStatNorm`, no running averages): each head sees exactly one corruption's samples,
so its statistics are that group's own (selective BatchNorm, applied to the heads as well).

The heads of all corruptions are one module with *stacked* parameters (leading axis = head
index): one tree of fixed shapes in the train state, and the weight-merging distance to the
primary FC is one vectorised expression.
"""

import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrobust.models.layers import Conv
from jaxrobust.models.resnet import conv_init


class BatchStatNorm(nn.Module):
  """BatchNorm that always uses the current batch's statistics and keeps no running averages.

  ``y = (x - E[x]) / sqrt(Var[x] + eps) * scale + bias`` with the mean/variance over every axis
  but the last (averaged over ``axis_name`` when set, i.e. synchronised across devices).

  Attributes:
    epsilon: added to the variance.
    axis_name: mapped axis to average the statistics over, or None for per-device statistics.
  """
  epsilon: float = 1e-5
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (features,))
    bias = self.param('bias', nn.initializers.zeros, (features,))
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes)
    if self.axis_name is not None:
      mean = jax.lax.pmean(mean, self.axis_name)
    var = jnp.mean(jnp.square(x - mean), axis=axes)
    if self.axis_name is not None:
      var = jax.lax.pmean(var, self.axis_name)
    return (x - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias


class AttentionMask(nn.Module):
  """Soft attention mask in (0, 1): Conv3x3-BN-ReLU-ConvTranspose3x3-BN-sigmoid, same shape as x."""
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    norm = functools.partial(BatchStatNorm, axis_name=self.axis_name)
    y = Conv(c, (3, 3), padding='SAME', use_bias=False, kernel_init=conv_init, name='conv')(x)
    y = nn.relu(norm(name='bn1')(y))
    y = nn.ConvTranspose(c, (3, 3), strides=(1, 1), padding='SAME', use_bias=False,
                         kernel_init=conv_init, name='deconv')(y)
    return nn.sigmoid(norm(name='bn2')(y))


class AuxClassifier(nn.Module):
  """An auxiliary classifier: attention mask, bottleneck, global average pooling, FC.

  Attributes:
    num_classes: logits (the primary classifier's).
    attention: use the attention module (False: the Table 9 "w/o Attention" ablation, where the
      bottleneck reads the features directly).
    bottleneck_ratio: width of the bottleneck's inner layers relative to the input channels
      (0.5 in the released code).
    axis_name: mapped axis for synchronised BatchNorm, or None.
  """
  num_classes: int
  attention: bool = True
  bottleneck_ratio: float = 0.5
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, features):
    """Maps a feature map [b, h, w, C] to logits [b, num_classes]."""
    c = features.shape[-1]
    inner = max(1, int(round(c * self.bottleneck_ratio)))
    norm = functools.partial(BatchStatNorm, axis_name=self.axis_name)
    conv = functools.partial(Conv, padding='SAME', use_bias=False, kernel_init=conv_init)
    x = features
    if self.attention:
      x = AttentionMask(axis_name=self.axis_name, name='attention')(x) * x
    x = nn.relu(norm(name='bn1')(conv(inner, (1, 1), name='conv1')(x)))
    x = nn.relu(norm(name='bn2')(conv(inner, (3, 3), name='conv2')(x)))
    x = nn.relu(norm(name='bn3')(conv(c, (1, 1), name='conv3')(x)))
    return nn.Dense(self.num_classes, name='fc')(jnp.mean(x, axis=(1, 2)))


def init_heads(head: AuxClassifier, rng, num_heads: int, channels: int):
  """Independently initialised parameters of ``num_heads`` heads, stacked on a leading axis.

  Args:
    head: the head module.
    rng: PRNG key (split into one key per head).
    num_heads: number of auxiliary classifiers (training corruptions).
    channels: channels of the backbone's last feature map (the primary FC's input size).

  Returns:
    A params tree whose every leaf has leading dimension ``num_heads``.
  """
  if num_heads < 1:
    raise ValueError(f'num_heads must be >= 1, got {num_heads}.')
  # Parameter shapes do not depend on the spatial size, so any small map initialises them; the
  # initialisation runs outside any mapped axis, so without synchronised statistics.
  head = head.clone(axis_name=None)
  dummy = jnp.zeros((2, 4, 4, channels), jnp.float32)
  keys = jax.random.split(rng, num_heads)
  return jax.jit(jax.vmap(lambda k: head.init(k, dummy)['params']))(keys)


def apply_heads(head: AuxClassifier, stacked_params, features):
  """Head ``j`` on group ``j``: ``[t, b, h, w, C] -> [t, b, num_classes]``.

  Each head's BatchNorm normalises with the statistics of its own group only. The heads run one
  after another (t is static and small): ``vmap`` over stacked weights would turn every
  convolution into a grouped one, whose gradient XLA computes ~15x slower on CPU.
  """
  num_heads = jax.tree.leaves(stacked_params)[0].shape[0]
  if features.shape[0] != num_heads:
    raise ValueError(f'{num_heads} heads need {num_heads} feature groups, got '
                     f'{features.shape[0]}.')
  return jnp.stack([head.apply({'params': jax.tree.map(lambda p, j=j: p[j], stacked_params)},
                               features[j]) for j in range(num_heads)])


def classifier_distance(primary_fc, stacked_params):
  """Squared L2 distance between the primary FC and each auxiliary FC (Eq. 6's ||.||_2^2).

  ``||W_0 - W_j||^2 + ||b_0 - b_j||^2``: theta_g is the whole FC layer, weights and bias, as in
  the released code.

  Args:
    primary_fc: the backbone's ``params['classifier']`` ({'kernel': [C, K], 'bias': [K]}).
    stacked_params: stacked head parameters (their ``'fc'`` subtree has the same leaves with a
      leading head axis).

  Returns:
    [t] squared distances.
  """
  aux_fc = stacked_params['fc']
  per_leaf = jax.tree.map(
      lambda w0, wj: jnp.sum(jnp.square(wj - w0[None]).reshape(wj.shape[0], -1), axis=1),
      primary_fc, aux_fc)
  return sum(jax.tree.leaves(per_leaf))
