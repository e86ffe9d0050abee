"""Backbones: published parameter counts, domain-aware BatchNorm, features, export."""

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


def test_stem_choice():
  small = models.create_model('resnet18', num_classes=10, image_size=32)
  big = models.create_model('resnet18', num_classes=10, image_size=224)
  assert small.stem == 'cifar' and big.stem == 'imagenet'
  out = big.apply(big.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)), train=False),
                  jnp.zeros((1, 64, 64, 3)), train=False, return_features=True)
  assert out['features'].shape == (1, 2, 2, 512)  # /32 with the ImageNet stem


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
  # a domain without its own affine uses the shared one
  a, _ = models.apply_model(model, params, stats, x, train=False, domain='gaussian_noise')
  b, _ = models.apply_model(model, params, {**stats, 'gaussian_noise': stats['main']}, x,
                            train=False, domain='main')
  np.testing.assert_allclose(a, b, rtol=1e-6)


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
  model = models.create_model('resnet_tiny', num_classes=3, mean=(0.5,), std=(0.25,))
  params, stats = models.init_variables(model, jax.random.PRNGKey(0), (8, 8, 1))
  x = jnp.full((2, 8, 8, 1), 0.5)  # equals the mean -> zero after normalisation
  feats = models.layers.Normalize((0.5,), (0.25,))(x)
  assert float(jnp.abs(feats).max()) == 0.0
  logits, _ = models.apply_model(model, params, stats, x, train=False)
  assert logits.shape == (2, 3)
