"""Domain-aware BatchNorm and small layers shared by every backbone.

A *domain* names a source of data (``'main'`` for clean images, ``'aux'`` for adversarial or
mixed ones, a corruption name, ...). Running statistics are kept per domain *outside* the model:
the caller passes only the named domain's statistics as the ``batch_stats`` collection (see
:func:`jaxrobust.models.apply_model`), so a pass can never touch another domain's statistics.
Affine parameters are shared by default; domains listed in ``affine_domains`` get their own
``scale_<domain>`` / ``bias_<domain>`` parameters (AdvProp / MixProp auxiliary BN).
"""

import functools
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

MAIN = 'main'
# The auxiliary BatchNorm of the methods with two (AdvProp, MixProp): its statistics and affine
# parameters are kept apart from MAIN's.
AUX = 'aux'


def loop_friendly_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                       dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                       precision=None, preferred_element_type=None):
  """``lax.conv_general_dilated`` whose input gradient stays fast inside ``lax.scan`` on XLA:CPU.

  Same value and same derivatives (bit for bit) as ``lax.conv_general_dilated``; only how the
  input tangent is written differs. JAX differentiates ``y = conv(x, W)`` w.r.t. ``x`` into a
  convolution whose kernel has its in/out feature axes swapped (HLO ``dim_labels=..._01oi``).
  XLA:CPU rewrites such convolutions into the canonical layout its fast (Eigen) kernels need only
  in the entry computation, not in loop bodies (jax-ml/jax#12868), so inside the ``lax.scan`` of
  an attack or a noise-generator loop they run as a naive loop: a PGD step cost 6.4x a plain
  input gradient of ResNet-8-wide here (batch 128). This function declares the tangent map
  ``dx -> conv(dx, swap(W))`` with an explicitly swapped kernel and matching dimension numbers,
  so the transposed (input-gradient) convolution JAX emits is already canonical.

  Grouped convolutions fall back to ``lax.conv_general_dilated``. The arguments are those of
  ``lax.conv_general_dilated`` (it is a drop-in ``conv_general_dilated`` for ``nn.Conv``).
  """
  kwargs = dict(window_strides=window_strides, padding=padding, lhs_dilation=lhs_dilation,
                rhs_dilation=rhs_dilation, feature_group_count=feature_group_count,
                batch_group_count=batch_group_count, precision=precision,
                preferred_element_type=preferred_element_type)
  if feature_group_count != 1 or batch_group_count != 1:
    return jax.lax.conv_general_dilated(lhs, rhs, dimension_numbers=dimension_numbers, **kwargs)
  dn = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  out_axis, in_axis = dn.rhs_spec[:2]
  swapped_dn = jax.lax.ConvDimensionNumbers(
      dn.lhs_spec, (in_axis, out_axis) + tuple(dn.rhs_spec[2:]), dn.out_spec)
  conv = functools.partial(jax.lax.conv_general_dilated, dimension_numbers=dn, **kwargs)

  @jax.custom_jvp
  def f(x, w):
    return conv(x, w)

  def f_jvp(primals, tangents):
    (x, w), (dx, dw) = primals, tangents
    y = conv(x, w)
    terms = []
    if not isinstance(dx, SymbolicZero):
      w_swapped = jnp.swapaxes(w, out_axis, in_axis)
      terms.append(jax.lax.conv_general_dilated(dx, w_swapped, dimension_numbers=swapped_dn,
                                                **kwargs))
    if not isinstance(dw, SymbolicZero):
      terms.append(conv(x, dw))
    dy = functools.reduce(jnp.add, terms) if terms else jnp.zeros_like(y)
    return y, dy

  f.defjvp(f_jvp, symbolic_zeros=True)
  return f(lhs, rhs)


# ``nn.Conv`` with :func:`loop_friendly_conv`: same parameters, names and values as ``nn.Conv``.
Conv = functools.partial(nn.Conv, conv_general_dilated=loop_friendly_conv)


class DomainBatchNorm(nn.Module):
  """BatchNorm whose affine parameters may depend on the domain of the batch.

  In training mode the batch is normalised with its own statistics
  ``y = (x - E[x]) / sqrt(Var[x] + eps) * scale + bias`` (over the whole global batch when
  ``axis_name`` is set, i.e. synchronised BN), and the running averages are updated as
  ``ra = momentum * ra + (1 - momentum) * batch_stat`` *only if* the ``batch_stats`` collection
  is mutable. In eval mode the running averages are used. Flax ``momentum=0.9`` is PyTorch's
  ``momentum=0.1``; the variance is the biased one, as in ``flax.linen.BatchNorm``.

  Attributes:
    momentum: decay of the running averages.
    epsilon: added to the variance.
    axis_name: mapped axis over which batch statistics are averaged (synchronised BN) or None.
    affine_domains: domains with their own affine parameters; all others use the shared ones.
    scale_init: initialiser of the scale (zeros for the last BN of a residual branch if wanted).
  """
  momentum: float = 0.9
  epsilon: float = 1e-5
  axis_name: Optional[str] = None
  affine_domains: Sequence[str] = ()
  scale_init: nn.initializers.Initializer = nn.initializers.ones

  @nn.compact
  def __call__(self, x, *, train: bool, domain: str = MAIN):
    features = x.shape[-1]
    reduce_axes = tuple(range(x.ndim - 1))
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((features,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((features,), jnp.float32))
    # Create every domain's affine parameters at init so the parameter tree is static.
    scale = self.param('scale', self.scale_init, (features,))
    bias = self.param('bias', nn.initializers.zeros, (features,))
    for d in self.affine_domains:
      s = self.param(f'scale_{d}', self.scale_init, (features,))
      b = self.param(f'bias_{d}', nn.initializers.zeros, (features,))
      if d == domain:
        scale, bias = s, b

    if train:
      xf = x.astype(jnp.float32)
      mean = jnp.mean(xf, axis=reduce_axes)
      if self.axis_name is not None:
        mean = jax.lax.pmean(mean, self.axis_name)
      # Two-pass variance: exact and stable, and identical for 1 or N synchronised devices.
      var = jnp.mean(jnp.square(xf - mean), axis=reduce_axes)
      if self.axis_name is not None:
        var = jax.lax.pmean(var, self.axis_name)
      if self.is_mutable_collection('batch_stats') and not self.is_initializing():
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    else:
      mean, var = ra_mean.value, ra_var.value
    inv = jax.lax.rsqrt(var + self.epsilon) * scale
    return ((x - mean) * inv + bias).astype(x.dtype)


class Normalize(nn.Module):
  """First layer of every model: maps pixels in [0, 1] to ``(x - mean) / std`` per channel."""
  mean: Sequence[float]
  std: Sequence[float]

  def __call__(self, x):
    c = x.shape[-1]
    mean = jnp.asarray(self.mean, x.dtype)
    std = jnp.asarray(self.std, x.dtype)
    if mean.shape[0] != c:  # a grey-scale dataset with RGB constants, or vice versa
      mean, std = jnp.full((c,), jnp.mean(mean)), jnp.full((c,), jnp.mean(std))
    return (x - mean) / std
