"""On-device augmentations: RandAugment's ops, AugMix, its JSD loss, and AugMix in vanilla / EWS."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxrobust import augmentations, methods, models, parallel, train
from jaxrobust.methods import common
from jaxrobust.methods import ews as ews_lib
from tests.conftest import method_on_tiny_model, random_batch, tiny_config


def _images(n=16, size=8, seed=0):
  """8-bit-valued images (so posterize / solarize at level 0 are exact identities)."""
  rng = np.random.default_rng(seed)
  return jnp.asarray(np.round(rng.uniform(size=(n, size, size, 3)) * 255) / 255, jnp.float32)


def test_rand_augment_ops():
  x = _images()
  out = jax.jit(augmentations.rand_augment, static_argnums=(2, 3))(x, jax.random.key(0), 2, 9.0)
  assert out.shape == x.shape and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  changed = np.abs(np.asarray(out) - np.asarray(x)).reshape(16, -1).max(-1) > 1e-6
  assert changed.sum() >= 12  # identity is 1 of 14 ops per layer
  # At magnitude 0 every op but auto-contrast and equalize is the identity (on 8-bit images).
  once = jax.jit(augmentations._augment_once, static_argnums=2)
  for seed in range(3):
    out0 = once(x, jax.random.key(seed), 0.0)
    op = jax.random.randint(jax.random.split(jax.random.key(seed))[0], (16,), 0,
                            len(augmentations.AUGMENT_OPS))
    keep = ~np.isin(np.asarray(op), [augmentations.AUGMENT_OPS.index('auto_contrast'),
                                     augmentations.AUGMENT_OPS.index('equalize')])
    np.testing.assert_allclose(np.asarray(out0)[keep], np.asarray(x)[keep], atol=1e-5)
  # Equalize spreads dark images over the range (test_equalize_is_pils has the exact values; as
  # PIL's, it leaves images of under 256 pixels alone, hence 32x32 here).
  dark = _images(n=4, size=32) * 0.2
  eq = np.asarray(jax.jit(augmentations._equalize)(dark))
  assert eq.max() == pytest.approx(1.0) and eq.std() > 3 * float(np.std(dark))


def test_per_image_levels_and_augmix_op_ranges():
  x = _images(n=2, size=12)
  strength_ops = ('rotate', 'shear_x', 'translate_y', 'solarize')
  once = jax.jit(augmentations._augment_once, static_argnums=(3,),
                 static_argnames=('translate', 'posterize_bits'))
  for seed in range(4):  # image 0 at level 0 (identity), image 1 at full strength
    out = np.asarray(once(x, jax.random.key(seed), jnp.asarray([0.0, 1.0]), strength_ops))
    np.testing.assert_allclose(out[0], np.asarray(x[0]), atol=1e-5)
    assert np.abs(out[1] - np.asarray(x[1])).max() > 0.1
  # AugMix's posterize keeps 4 bits at level 0 (AutoAugment's 8): multiples of 16 / 255.
  post = np.asarray(once(x, jax.random.key(0), 0.0, ('posterize',), posterize_bits=4)) * 255
  np.testing.assert_allclose(post, np.round(post / 16) * 16, atol=1e-3)
  assert not np.allclose(post, np.asarray(x) * 255)
  # translate_x at level 1 moves by `translate` of the width: 12 / 3 = 4 columns.
  shifted = np.asarray(once(x, jax.random.key(0), 1.0, ('translate_x',),
                            translate=augmentations.AUGMIX_TRANSLATE))
  for i in range(2):
    moved = [k for k in (-4, 4) if np.allclose(shifted[i, :, max(0, -k):12 - max(0, k)],
                                               np.asarray(x)[i, :, max(0, k):12 + min(0, k)],
                                               atol=1e-5)]
    assert moved, f'image {i} is not shifted by 4 columns'


def test_augmix_is_a_random_mixture_whose_strength_grows_with_severity():
  x = _images(n=32)
  mix = jax.jit(augmentations.augmix, static_argnums=(3, 4))  # severity traced: one compile
  a, b = mix(x, jax.random.key(0), 3, 3, -1), mix(x, jax.random.key(0), 3, 3, -1)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))   # a function of the key
  c = mix(x, jax.random.key(1), 3, 3, -1)
  assert a.shape == x.shape and 0.0 <= float(a.min()) and float(a.max()) <= 1.0
  assert not np.allclose(np.asarray(a), np.asarray(c))
  distance = {s: float(jnp.mean(jnp.abs(mix(x, jax.random.key(2), s, 3, -1) - x)))
              for s in (1, 10)}
  assert 0.0 < distance[1] < 0.7 * distance[10]
  # Each image is mixed with its own (Beta) weight: some stay close, others move far.
  per_image = np.asarray(jnp.mean(jnp.abs(mix(x, jax.random.key(3), 10, 3, -1) - x),
                                  axis=(1, 2, 3)))
  assert per_image.max() > 3 * per_image.min()


def test_jensen_shannon_consistency_matches_numpy_and_reaches_every_view():
  rng = np.random.default_rng(0)
  views = [jnp.asarray(rng.normal(size=(4, 5)), jnp.float32) for _ in range(3)]
  p = [np.exp(v) / np.exp(v).sum(-1, keepdims=True) for v in map(np.asarray, views)]
  m = np.clip(sum(p) / 3, 1e-7, 1)
  expected = np.mean([np.mean(np.sum(q * (np.log(q) - np.log(m)), -1)) for q in p])
  np.testing.assert_allclose(float(common.jensen_shannon_consistency(*views)), expected,
                             rtol=1e-5)
  assert float(common.jensen_shannon_consistency(views[0], views[0], views[0])) == (
      pytest.approx(0.0, abs=1e-6))
  grads = jax.grad(lambda vs: common.jensen_shannon_consistency(*vs))(views)
  assert all(float(jnp.abs(g).sum()) > 0 for g in grads)
  settings = augmentations.AugMixSettings(jsd_weight=12.0)
  labels = jnp.asarray([0, 1, 2, 3])
  loss, clean = common.augmix_loss(jnp.concatenate(views), labels, settings)
  ce = float(optax.softmax_cross_entropy_with_integer_labels(views[0], labels).mean())
  np.testing.assert_allclose(float(loss), ce + 12 * expected, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(clean), np.asarray(views[0]))


def test_vanilla_augmix_step_trains_on_the_clean_images_and_two_views():
  # One op per view keeps the compile short; the chains themselves are tested above.
  config, mesh, m, model, state = method_on_tiny_model('vanilla', augmix=True, augmix_severity=5,
                                                       augmix_width=1, augmix_depth=1)
  assert m.forward_backward_passes() == 3.0
  host = parallel.to_host(state)
  m.train_step = chex.assert_max_traces(m.train_step, n=1)
  step = train.make_train_step(m, config, mesh)
  batch = random_batch()
  new_state, metrics = step(parallel.replicate(host, mesh), parallel.shard_batch(batch, mesh))
  after = parallel.to_host(new_state.batch_stats)
  step(new_state, parallel.shard_batch(random_batch(1), mesh))  # no retrace (state donated)
  # Reproduce the step: its key -> (AugMix key, dropout key); views of the batch.
  rng = jax.random.fold_in(jax.random.fold_in(host.rng, 0), 0)
  views = jax.jit(m.augmix.views)(jnp.asarray(batch['image']), jax.random.split(rng)[0])
  assert views.shape[0] == 3 * batch['image'].shape[0]
  np.testing.assert_array_equal(np.asarray(views[:8]), batch['image'])
  logits, stats = models.apply_model(model, host.params, host.batch_stats, views, train=True)
  expected_loss, _ = common.augmix_loss(logits, jnp.asarray(batch['label']), m.augmix)
  np.testing.assert_allclose(float(metrics['loss']), float(expected_loss), rtol=1e-4)
  # One set of batch statistics over all 3B images updates 'main'.
  chex.assert_trees_all_close(after, parallel.to_host(stats), rtol=1e-4, atol=1e-5)


def test_ews_with_augmix_distils_the_subnet_on_every_view():
  config, mesh, m, model, state = method_on_tiny_model('ews', augmix=True, ews_search='random',
                                                       augmix_width=1, augmix_depth=1)
  assert m.forward_backward_passes() == 6.0  # 3B images through the full net and the subnet
  host = parallel.to_host(state)
  x = jnp.asarray(random_batch()['image'])
  views = jax.jit(m.augmix.views)(x, jax.random.key(0))
  masks = m.space.random(jax.random.key(1))
  y = jnp.asarray(random_batch()['label'])
  loss, (_, metrics) = m.loss_fn(host.params, host.batch_stats, views, y, None, masks,
                                 jax.random.key(2))
  logits, _ = models.apply_model(model, host.params, host.batch_stats, views, train=True)
  base, clean = common.augmix_loss(logits, y, m.augmix)
  kl, _ = ews_lib.subnet_distillation(
      model, host.params, host.batch_stats, views, logits, masks)
  np.testing.assert_allclose(float(metrics['base_loss']), float(base), rtol=1e-5)
  np.testing.assert_allclose(float(loss), float(base + m.lam * kl), rtol=1e-5)
  np.testing.assert_allclose(float(metrics['accuracy']), float(common.accuracy(clean, y)))


@pytest.mark.parametrize('overrides,match', [
    (dict(augmix='yes'), r"augmix must be True or False, got 'yes'"),
    (dict(augmix=True, augmix_severity=0), r'augmix_severity must be an integer 1\.\.10, got 0'),
    (dict(augmix=True, augmix_width=0), r'augmix_width must be an integer >= 1, got 0'),
    (dict(augmix=True, augmix_depth=0), r'augmix_depth must be an integer -1 .* got 0'),
    (dict(augmix=True, augmix_alpha=0.0), r'augmix_alpha must be positive, got 0\.0'),
    (dict(augmix=True, augmix_jsd_weight=-1.0), r'augmix_jsd_weight must be >= 0, got -1\.0'),
    (dict(augmix=True, method='mixprop'),
     r"augmix=True: method 'mixprop' does not train on AugMix views; the methods that do are "
     r"'ews', 'vanilla' \("),
    (dict(augmix=True, method='ews_pgd_at'), r"method 'ews_pgd_at' does not train on AugMix"),
    (dict(augmix=True, device_augment='autoaugment_cifar10'),
     r"augmix=True with device_augment='autoaugment_cifar10': AugMix replaces AutoAugment"),
    (dict(augmix=True, cutout_size=16),
     r"augmix=True with cutout_size=16: AugMix's views and its clean image would share one "
     r"Cutout square"),
])
def test_bad_augmix_settings_fail_before_compiling(overrides, match):
  config = tiny_config()
  for key, value in overrides.items():  # untyped, as in a config built in a notebook
    if key in config:
      del config[key]
    config[key] = value
  with pytest.raises(ValueError, match=match):
    methods.get(config.method)(config)


def test_without_jsd_one_augmix_view_replaces_the_batch():
  settings = augmentations.AugMixSettings.from_config(
      ml_collections.ConfigDict({'augmix': True, 'augmix_jsd_weight': 0.0}))
  x = _images(n=4)
  view = jax.jit(settings.views)(x, jax.random.key(0))
  assert settings.num_views == 1 and view.shape == x.shape and not np.allclose(view, x)
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(4, 10)), jnp.float32)
  loss, clean = common.augmix_loss(logits, jnp.arange(4), settings)
  assert clean is logits
  np.testing.assert_allclose(float(loss), float(common.cross_entropy(logits, jnp.arange(4))))
  assert augmentations.AugMixSettings.from_config(ml_collections.ConfigDict({})) is None


# --------------------------------------------------------------------- AutoAugment and Cutout

_NO_MAGNITUDE = ('auto_contrast', 'equalize', 'invert')


@pytest.mark.parametrize('policy', sorted(augmentations.AUTOAUGMENT_POLICIES))
def test_autoaugment_policy_tables_are_well_formed(policy):
  table = augmentations.AUTOAUGMENT_POLICIES[policy]
  assert len(table) == 25 and all(len(sub) == 2 for sub in table)
  for op, prob, magnitude in (step for sub in table for step in sub):
    assert op in augmentations.AUTOAUGMENT_OPS and 0.0 <= prob <= 1.0
    assert (magnitude is None) == (op in _NO_MAGNITUDE), (op, magnitude)
    assert magnitude is None or magnitude in range(10)


def _with_policy(monkeypatch, *sub_policies):
  """``f(x, key)``: autoaugment with a made-up policy (a fresh name: jit caches by name)."""
  name = f'test{len(augmentations.AUTOAUGMENT_POLICIES)}'
  monkeypatch.setitem(augmentations.AUTOAUGMENT_POLICIES, name, tuple(sub_policies))
  fn = jax.jit(augmentations.autoaugment, static_argnums=2)
  return lambda x, key: fn(x, key, name)


def test_autoaugment_applies_each_step_with_its_probability_and_magnitude(monkeypatch):
  x = _images(n=400)
  never = ('invert', 0.0, None)
  # Probability 1 then 0: every image inverted exactly once.
  out = _with_policy(monkeypatch, (('invert', 1.0, None), never))(x, jax.random.key(0))
  np.testing.assert_allclose(np.asarray(out), 1.0 - np.asarray(x), atol=1e-6)
  # Probability 0.3: about 30% of the images are inverted, the others untouched.
  out = np.asarray(_with_policy(monkeypatch, (('invert', 0.3, None), never))(
      x, jax.random.key(1)))
  inverted = np.all(np.isclose(out, 1.0 - np.asarray(x), atol=1e-6), axis=(1, 2, 3))
  untouched = np.all(np.isclose(out, np.asarray(x), atol=1e-6), axis=(1, 2, 3))
  assert np.all(inverted ^ untouched) and 0.24 < inverted.mean() < 0.36
  # Two sub-policies drawn uniformly per image: invert, or brightness at bin 0 (the identity).
  out = np.asarray(_with_policy(monkeypatch, (('invert', 1.0, None), never),
                                (('brightness', 1.0, 0), never))(x, jax.random.key(2)))
  inverted = np.all(np.isclose(out, 1.0 - np.asarray(x), atol=1e-6), axis=(1, 2, 3))
  assert 0.42 < inverted.mean() < 0.58
  # Bin 7 of posterize keeps 8 - round(4 * 7 / 9) = 5 bits: multiples of 8 / 255.
  post = np.asarray(_with_policy(monkeypatch, (('posterize', 1.0, 7), never))(
      x, jax.random.key(3))) * 255
  np.testing.assert_allclose(post, np.round(post / 8) * 8, atol=1e-3)
  assert not np.allclose(post, np.round(post / 16) * 16, atol=1e-3)
  # Bin 8 keeps 8 - round(32 / 9) = 4 bits (torchvision's table; floor would keep 5).
  post = np.asarray(_with_policy(monkeypatch, (('posterize', 1.0, 8), never))(
      x, jax.random.key(3))) * 255
  np.testing.assert_allclose(post, np.round(post / 16) * 16, atol=1e-3)
  # The second step runs after the first: invert twice is the identity.
  out = _with_policy(monkeypatch, (('invert', 1.0, None), ('invert', 1.0, None)))(
      x, jax.random.key(4))
  np.testing.assert_allclose(np.asarray(out), np.asarray(x), atol=1e-6)


def test_autoaugment_with_the_learned_policies():
  x = _images(n=64)
  for policy in ('cifar10', 'imagenet'):
    fn = jax.jit(augmentations.autoaugment, static_argnums=2)
    out = np.asarray(fn(x, jax.random.key(0), policy))
    assert out.shape == x.shape and out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_array_equal(out, np.asarray(fn(x, jax.random.key(0), policy)))
    changed = np.abs(out - np.asarray(x)).reshape(64, -1).max(-1) > 1e-6
    assert 0.5 < changed.mean() < 1.0  # most sub-policies change the image; some steps skip
  # device_augment: the policy, then Cutout, each with its half of the key.
  config = ml_collections.ConfigDict({'device_augment': 'autoaugment_cifar10', 'cutout_size': 3})
  k_policy, k_cutout = jax.random.split(jax.random.key(5))
  expected = augmentations.cutout(fn(x, k_policy, 'cifar10'), k_cutout, 3)
  np.testing.assert_allclose(
      np.asarray(jax.jit(augmentations.device_augmentation(config))(x, jax.random.key(5))),
      np.asarray(expected), atol=1e-5)
  assert augmentations.device_augmentation(ml_collections.ConfigDict({})) is None


def test_cutout_greys_one_clipped_square_per_image():
  x = _images(n=64, size=12) * 0.4  # no pixel is 0.5 before Cutout
  out = np.asarray(jax.jit(augmentations.cutout, static_argnums=2)(x, jax.random.key(0), 4))
  grey = np.all(out == 0.5, axis=-1)
  for i in range(64):
    rows, cols = np.nonzero(grey[i])
    assert 0 < len(rows) <= 16
    # A (clipped) rectangle: its bounding box is filled, at most 4 wide, and only the border
    # clips it.
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert len(rows) == height * width and height <= 4 and width <= 4
    assert height == 4 or rows.min() == 0 or rows.max() == 11
    np.testing.assert_array_equal(out[i][~grey[i]], np.asarray(x[i])[~grey[i]])
  assert augmentations.cutout(x, jax.random.key(0), 0) is x


def test_the_loop_augments_the_batch_before_the_method_step():
  # The step with Cutout (the cheapest device augmentation to compile) equals the plain step on
  # the augmented images, made with the loop's own key: the method's key is untouched.
  config, mesh, m, _, state = method_on_tiny_model('vanilla', cutout_size=4)
  plain_config, _, plain, _, _ = method_on_tiny_model('vanilla')
  host = parallel.to_host(state)
  m.train_step = chex.assert_max_traces(m.train_step, n=1)
  step = train.make_train_step(m, config, mesh)
  batch = random_batch()
  new_state, metrics = step(parallel.replicate(host, mesh), parallel.shard_batch(batch, mesh))
  new_params = parallel.to_host(new_state.params)
  step(new_state, parallel.shard_batch(random_batch(1), mesh))  # no retrace (state donated)
  key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(host.rng, 0), 0),
                           train._AUGMENT_TAG)
  augmented = augmentations.device_augmentation(config)(jnp.asarray(batch['image']), key)
  assert not np.allclose(np.asarray(augmented), batch['image'])
  expected_state, expected = train.make_train_step(plain, plain_config, mesh)(
      parallel.replicate(host, mesh),
      parallel.shard_batch({**batch, 'image': np.asarray(augmented)}, mesh))
  np.testing.assert_allclose(float(metrics['loss']), float(expected['loss']), rtol=1e-6)
  chex.assert_trees_all_close(new_params, parallel.to_host(expected_state.params),
                              rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('overrides,match', [
    (dict(device_augment='autoaugment'),
     r"Unknown device_augment 'autoaugment'; valid: none, autoaugment_cifar10, "
     r"autoaugment_imagenet"),
    (dict(cutout_size=-2), r'cutout_size must be an integer >= 0 .*got -2'),
])
def test_bad_device_augmentation_fails_before_compiling(overrides, match):
  with pytest.raises(ValueError, match=match):
    train.validate_config(tiny_config(**overrides))


def test_equalize_is_pils():
  from PIL import Image, ImageOps  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(3)
  images = [rng.integers(0, 256, (32, 32, 3)),                     # spread values
            rng.choice([60, 120, 180, 240], (32, 32, 3)),           # four grey levels
            np.full((32, 32, 3), 77), np.r_[np.full(1023, 5), [9]].reshape(32, 32, 1) * np.ones(3)]
  x = jnp.asarray(np.stack(images).astype(np.float32) / 255.0)
  got = np.round(np.asarray(jax.jit(augmentations._equalize)(x)) * 255).astype(np.uint8)
  for i, image in enumerate(images):
    want = np.asarray(ImageOps.equalize(Image.fromarray(image.astype(np.uint8))))
    np.testing.assert_array_equal(got[i], want)


def test_shears_keep_the_top_left_corner_and_augmix_fills_black():
  # PIL's (and torchvision's) shear maps output (x, y) to input (x + s y, y): row 0 stays put.
  line = np.zeros((1, 32, 32, 1), np.float32)
  line[..., 16, :] = 1.0
  one = jnp.ones((1,))
  out = np.asarray(augmentations._apply_ops(
      jnp.asarray(line), jnp.zeros((1,), jnp.int32), one, one, ('shear_x',), translate=0.0,
      posterize_bits=8, fill=0.0))[0, ..., 0]
  assert out[0].argmax() == 16 and out[10].argmax() == 13  # shear 0.3: 3 columns by row 10
  shifted = {fill: np.asarray(augmentations._apply_ops(
      jnp.ones((1, 8, 8, 1)), jnp.zeros((1,), jnp.int32), one, one, ('translate_x',),
      translate=0.25, posterize_bits=8, fill=fill))[0, :, :, 0]
             for fill in (augmentations.AUGMIX_FILL, augmentations.AUTOAUGMENT_FILL)}
  assert shifted[0.0].min() == 0.0 and shifted[0.5].min() == 0.5 and shifted[0.0].max() == 1.0
