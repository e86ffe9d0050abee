"""Backbones: published parameter counts, domain-aware BatchNorm, features, export."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrobust import models


def _num_params(name, num_classes, size):
  m = models.create_model(name, num_classes=num_classes, image_size=size)
  shapes = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0),
                                         jnp.zeros((1, size, size, 3)), train=False))
  return models.count_params(shapes['params'])


@pytest.mark.parametrize('name,num_classes,size,expected', [
    ('resnet18', 10, 32, 11_173_962),        # CIFAR ResNet-18 (11.17M)
    ('resnet18', 1000, 224, 11_689_512),     # torchvision resnet18
    ('resnet34', 1000, 224, 21_797_672),
    ('resnet50', 1000, 224, 25_557_032),     # 25.56M
    ('resnet101', 1000, 224, 44_549_160),
    ('wrn28_10', 10, 32, 36_479_194),        # 36.5M
    ('wrn34_10', 10, 32, 46_160_474),
    ('preact_resnet18', 10, 32, 11_172_170),  # 11.17M incl. the final BN
])
def test_published_parameter_counts(name, num_classes, size, expected):
  assert _num_params(name, num_classes, size) == expected


def test_custom_wide_resnet_and_unknown_names():
  assert _num_params('wrn16_4', 10, 32) == 2_748_890
  with pytest.raises(ValueError, match='Valid models: .*resnet18'):
    models.create_model('resnet19', num_classes=10)
  with pytest.raises(ValueError, match='6n\\+4'):
    models.create_model('wrn27_10', num_classes=10)
  with pytest.raises(ValueError, match='6n\\+4 with n >= 1'):  # no residual block at all
    models.create_model('wrn4_2', num_classes=10)
  with pytest.raises(ValueError, match='width must be an integer >= 1, got 0'):
    models.create_model('wrn16_0', num_classes=10)


def test_dropout_only_where_the_block_has_it():
  # a silently ignored rate would train a network without the regulariser the user asked for
  with pytest.raises(ValueError, match="model 'resnet50' has no dropout.*preact_resnet18"):
    models.create_model('resnet50', num_classes=10, dropout_rate=0.3)
  assert models.create_model('resnet50', num_classes=10, dropout_rate=0.0).dropout_rate == 0.0
  # A WideResNet applies its rate in training passes, and only there.
  wrn = models.create_model('wrn10_1', num_classes=10, dropout_rate=0.3)
  plain = models.create_model('wrn10_1', num_classes=10)
  params, stats = models.init_variables(plain, jax.random.PRNGKey(0), (8, 8, 3))
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, 8, 8, 3))

  def train_pass(model, key):
    return models.apply_model(model, params, stats, x, train=True, update_stats=False,
                              rngs={'dropout': jax.random.PRNGKey(key)})[0]
  assert not np.allclose(train_pass(wrn, 0), train_pass(wrn, 1))
  assert not np.allclose(train_pass(wrn, 0), train_pass(plain, 0))
  np.testing.assert_array_equal(
      models.apply_model(wrn, params, stats, x, train=False)[0],
      models.apply_model(plain, params, stats, x, train=False)[0])



def test_stem_choice():
  small = models.create_model('resnet18', num_classes=10, image_size=32)
  big = models.create_model('resnet18', num_classes=10, image_size=224)
  assert small.stem == 'cifar' and big.stem == 'imagenet'
  x = jnp.zeros((1, 64, 64, 3))

  def feature_shape(model):
    # shapes only (eval_shape traces, computes nothing): a ResNet-18 run op by op takes seconds
    out = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), x, train=False,
                                                        return_features=True)[0])
    return out['features'].shape
  assert feature_shape(big) == (1, 2, 2, 512)  # /32 with the ImageNet stem
  assert feature_shape(small) == (1, 8, 8, 512)  # /8 with the CIFAR stem


@pytest.fixture(scope='module')
def tiny():
  model = models.create_model('resnet_tiny', num_classes=5, affine_domains=('aux',))
  params, stats = models.init_variables(model, jax.random.PRNGKey(0), (8, 8, 3),
                                        domains=('main', 'aux', 'gaussian_noise'))
  x = jax.random.uniform(jax.random.PRNGKey(1), (6, 8, 8, 3))
  return model, params, stats, x


def _changed(a, b):
  return any(not np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize('domain', ['main', 'aux', 'gaussian_noise'])
def test_training_pass_changes_only_its_domain(tiny, domain):
  model, params, stats, x = tiny
  _, new = models.apply_model(model, params, stats, x, train=True, domain=domain)
  for d in stats:
    assert _changed(stats[d], new[d]) == (d == domain), d


def test_eval_and_frozen_passes_change_nothing(tiny):
  model, params, stats, x = tiny
  eval_out, new = models.apply_model(model, params, stats, x, train=False, domain='aux')
  assert new is stats
  frozen_out, new = models.apply_model(model, params, stats, x, train=True, domain='aux',
                                       update_stats=False)
  assert new is stats
  # the frozen training pass still normalises with batch statistics
  assert not np.allclose(eval_out, frozen_out)
  with pytest.raises(ValueError, match='never change statistics'):
    models.apply_model(model, params, stats, x, train=False, update_stats=True)
  with pytest.raises(ValueError, match="domain 'mixup'"):
    models.apply_model(model, params, stats, x, train=False, domain='mixup')


def test_per_domain_affine_parameters(tiny):
  model, params, stats, x = tiny
  bn = params['stem_bn']
  assert set(bn) == {'scale', 'bias', 'scale_aux', 'bias_aux'}
  # perturbing the aux affine changes aux outputs and leaves main outputs alone
  p2 = jax.tree_util.tree_map_with_path(
      lambda path, v: v + 1.0 if 'bias_aux' in jax.tree_util.keystr(path) else v, params)
  for domain, should_change in (('main', False), ('aux', True)):
    a, _ = models.apply_model(model, params, stats, x, train=False, domain=domain)
    b, _ = models.apply_model(model, p2, stats, x, train=False, domain=domain)
    assert (not np.allclose(a, b)) == should_change
  # A domain without its own affine uses the shared one (not aux's, which p2 moved) with its
  # own running statistics (made distinct here; at initialisation every domain's are equal).
  distinct = {**stats, 'gaussian_noise': jax.tree.map(lambda s: s + 0.5, stats['gaussian_noise'])}
  a, _ = models.apply_model(model, p2, distinct, x, train=False, domain='gaussian_noise')
  b, _ = models.apply_model(model, p2, {**distinct, 'main': distinct['gaussian_noise']}, x,
                            train=False, domain='main')
  np.testing.assert_allclose(a, b, rtol=1e-6)
  c, _ = models.apply_model(model, p2, {**distinct, 'aux': distinct['gaussian_noise']}, x,
                            train=False, domain='aux')
  main, _ = models.apply_model(model, p2, distinct, x, train=False, domain='main')
  assert not np.allclose(a, c) and not np.allclose(a, main)


def test_features_and_export(tiny):
  model, params, stats, x = tiny
  out, _ = models.apply_model(model, params, stats, x, train=False, return_features=True)
  assert out['features'].shape == (6, 4, 4, 16) and out['pooled'].shape == (6, 16)
  np.testing.assert_allclose(out['pooled'], out['features'].mean(axis=(1, 2)), rtol=1e-6)
  exported = models.export_params(params, ('aux',))
  plain = models.create_model('resnet_tiny', num_classes=5)
  plain_params, _ = models.init_variables(plain, jax.random.PRNGKey(0), (8, 8, 3))
  assert models.count_params(exported) == models.count_params(plain_params)
  np.testing.assert_allclose(
      plain.apply({'params': exported, 'batch_stats': stats['main']}, x, train=False),
      out['logits'], rtol=1e-6)


def test_inputs_are_normalised_inside_the_model():
  x = jnp.full((2, 8, 8, 1), 0.5)  # equals the mean -> zero after normalisation
  feats = models.layers.Normalize((0.5,), (0.25,))(x)
  assert float(jnp.abs(feats).max()) == 0.0
  # The model applies it: on x it gives what an unnormalising twin gives on (x - mean) / std.
  model = models.create_model('resnet_tiny', num_classes=3, mean=(0.5,), std=(0.25,))
  identity = models.create_model('resnet_tiny', num_classes=3, mean=(0.0,), std=(1.0,))
  params, stats = models.init_variables(model, jax.random.PRNGKey(0), (8, 8, 1))
  x = jax.random.uniform(jax.random.PRNGKey(2), (2, 8, 8, 1))
  logits, _ = models.apply_model(model, params, stats, x, train=False)
  twin, _ = models.apply_model(identity, params, stats, (x - 0.5) / 0.25, train=False)
  np.testing.assert_allclose(logits, twin, rtol=1e-5, atol=1e-6)
  unnormalised, _ = models.apply_model(identity, params, stats, x, train=False)
  assert not np.allclose(logits, unnormalised, atol=1e-3)


# ------------------------------------------------------------------ loop-friendly convolution

@pytest.mark.parametrize('strides,padding,lhs_dilation,rhs_dilation', [
    ((1, 1), 'SAME', None, None),
    ((2, 2), 'SAME', None, None),
    ((2, 2), ((0, 1), (0, 1)), None, None),   # the CIFAR ResNet's strided 3x3 conv
    ((1, 1), 'VALID', None, (2, 2)),
    ((1, 2), ((1, 2), (0, 1)), (2, 1), None),
])
def test_loop_friendly_conv_has_the_value_and_derivatives_of_lax_conv(strides, padding,
                                                                      lhs_dilation, rhs_dilation):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 9, 8, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 3, 5)), jnp.float32)
  dn = ('NHWC', 'HWIO', 'NHWC')

  def loss(conv):
    return lambda x, w: jnp.sum(jnp.sin(conv(x, w, strides, padding, lhs_dilation, rhs_dilation,
                                              dn)))

  plain, friendly = loss(jax.lax.conv_general_dilated), loss(models.layers.loop_friendly_conv)
  np.testing.assert_array_equal(plain(x, w), friendly(x, w))
  for a, b in zip(jax.grad(plain, (0, 1))(x, w), jax.grad(friendly, (0, 1))(x, w)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # forward mode and second order work too (custom_jvp, not custom_vjp)
  np.testing.assert_allclose(jax.jvp(plain, (x, w), (x, w))[1],
                             jax.jvp(friendly, (x, w), (x, w))[1], rtol=1e-5)
  curvature = lambda f: jax.grad(lambda x: jnp.sum(jax.grad(f)(x, w) ** 2))(x)
  np.testing.assert_allclose(curvature(plain), curvature(friendly), rtol=1e-4, atol=1e-6)


def test_loop_friendly_conv_falls_back_for_grouped_convolutions():
  x = jnp.ones((1, 4, 4, 4))
  w = jnp.ones((3, 3, 2, 4))
  out = models.layers.loop_friendly_conv(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                         feature_group_count=2)
  assert out.shape == (1, 4, 4, 4) and float(out[0, 1, 1, 0]) == 18.0  # 3x3 window x 2 channels


def _scan_of_input_gradients_hlo(logits_fn, x):
  """Compiled HLO of a 2-step sign-gradient ascent on the input, as an attack runs it."""
  def loop(z):
    grad = jax.grad(lambda c: jnp.sum(logits_fn(c)[:, 0]))
    return jax.lax.scan(lambda c, _: (c + jnp.sign(grad(c)), None), z, None, length=2)[0]
  return jax.jit(loop).lower(x).compile().as_text()


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='an XLA:CPU code-generation property')
def test_input_gradients_inside_a_scan_compile_to_canonical_convolutions(tiny):
  """No convolution of an attack loop through a backbone keeps a swapped kernel layout.

  XLA:CPU canonicalises convolutions only outside loop bodies; a swapped-kernel ('01oi')
  convolution left in a loop runs as a naive loop, several times slower (jax-ml/jax#12868).
  """
  model, params, stats, x = tiny
  logits_fn = lambda z: model.apply({'params': params, 'batch_stats': stats['main']}, z,
                                    train=False)
  assert '_01oi->' not in _scan_of_input_gradients_hlo(logits_fn, x)

  # The control: the same loop over plain convolutions does keep them. If this fails, XLA
  # canonicalises loop bodies now and models.layers.loop_friendly_conv can go.
  conv = functools.partial(jax.lax.conv_general_dilated, window_strides=(1, 1), padding='SAME',
                           dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  w1, w2 = jnp.ones((3, 3, 3, 4)) / 27.0, jnp.ones((3, 3, 4, 5)) / 36.0
  plain = lambda z: jnp.mean(conv(jnp.tanh(conv(z, w1)), w2), axis=(1, 2))
  assert '_01oi->' in _scan_of_input_gradients_hlo(plain, x)
