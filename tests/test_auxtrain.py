"""Auxiliary Training: selective BN, distillation direction, weight merging, export, e2e."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrobust import methods, models, parallel, train
from jaxrobust.evaluation import auxtrain_heads, runner
from jaxrobust.methods import auxtrain, common
from jaxrobust.models import MAIN, apply_model, aux_heads
from tests.conftest import method_with_train_state, tiny_config

# Two cheap corruptions keep compile times low; the e2e run uses the paper's four.
CORRUPTIONS = ('gaussian_noise', 'gaussian_blur')
SEVERITIES = (3, 5)
TOTAL_STEPS = 10


def _config(**overrides):
  kw = dict(method='auxtrain', lr_schedule='constant', learning_rate=0.1, weight_decay=5e-4,
            sync_batch_stats=False, auxtrain_corruptions=CORRUPTIONS,
            auxtrain_severities=SEVERITIES, auxtrain_merge_fraction=0.5)
  kw.update(overrides)
  return tiny_config(**kw)


def _setup(num_devices=1, **overrides):
  config = _config(**overrides)
  return (config,) + method_with_train_state(config, num_devices=num_devices, steps_per_epoch=5,
                                             total_steps=TOTAL_STEPS, replicate=False)


@pytest.fixture(scope='module')
def base():
  """One initialised state (2 heads), shared by the tests that only vary loss/BN switches."""
  return _setup()


def _variant(base, **overrides):
  """A method with other switches on the same context and state (heads' shapes unchanged)."""
  _, mesh, m, model, state = base
  config = _config(**overrides)
  variant = methods.get('auxtrain')(config)
  variant.setup(m.ctx)
  return config, mesh, variant, model, state


@pytest.fixture(scope='module')
def grouped(base):
  """A batch and its groups [clean, noise, blur]: [3, 8, 8, 8, 3]."""
  m = base[2]
  batch = _batches(1)[0]
  x, y = jnp.asarray(batch['image']), jnp.asarray(batch['label'])
  xs = jnp.concatenate([x[None], jax.jit(m.corrupt)(x, jax.random.PRNGKey(3))])
  return x, y, xs


def _snapshot(tree):
  """A host copy that never aliases a (later donated) device buffer."""
  return jax.tree.map(lambda a: np.array(a, copy=True), parallel.to_host(tree))


def _batches(n, size=8, seed=0):
  rng = np.random.default_rng(seed)
  return [{'image': rng.uniform(size=(size, 8, 8, 3)).astype(np.float32),
           'label': rng.integers(0, 10, size).astype(np.int32)} for _ in range(n)]


# ----------------------------------------------------------------------------- heads


def test_heads_shapes_ablation_and_per_group_normalisation():
  head = aux_heads.AuxClassifier(num_classes=7)
  params = aux_heads.init_heads(head, jax.random.PRNGKey(0), 3, 16)
  assert params['fc']['kernel'].shape == (3, 16, 7) and params['fc']['bias'].shape == (3, 7)
  assert {'attention', 'conv1', 'conv2', 'conv3', 'fc'} <= set(params)
  # heads are initialised independently
  assert not np.allclose(params['fc']['kernel'][0], params['fc']['kernel'][1])
  no_att = jax.eval_shape(lambda: aux_heads.init_heads(
      aux_heads.AuxClassifier(num_classes=7, attention=False), jax.random.PRNGKey(0), 3, 16))
  assert 'attention' not in no_att
  # Every head normalises with its own group's statistics: a group that is a rescaled copy of
  # another gives the same logits under the same head parameters (joint statistics would not).
  same = jax.tree.map(lambda p: jnp.stack([p[0], p[0]]), params)
  f = jax.nn.relu(jax.random.normal(jax.random.PRNGKey(1), (4, 3, 3, 16)))
  out = jax.jit(functools.partial(aux_heads.apply_heads, head))(same, jnp.stack([f, 10.0 * f]))
  assert out.shape == (2, 4, 7)
  np.testing.assert_allclose(out[0], out[1], rtol=1e-3, atol=1e-3)
  joint = jax.jit(head.apply)({'params': jax.tree.map(lambda p: p[0], params)},
                              jnp.concatenate([f, 10.0 * f]))
  assert not np.allclose(joint[:4], joint[4:], atol=1e-2)


def test_classifier_distance_is_squared_l2_of_weights_and_biases():
  rng = np.random.default_rng(0)
  primary = {'kernel': rng.normal(size=(5, 3)), 'bias': rng.normal(size=(3,))}
  heads = {'fc': {'kernel': rng.normal(size=(2, 5, 3)), 'bias': rng.normal(size=(2, 3))}}
  got = aux_heads.classifier_distance(primary, heads)
  want = [np.sum((heads['fc']['kernel'][j] - primary['kernel']) ** 2)
          + np.sum((heads['fc']['bias'][j] - primary['bias']) ** 2) for j in range(2)]
  np.testing.assert_allclose(got, want, rtol=1e-6)


# ----------------------------------------------------------------------------- selective BN


def test_selective_bn_uses_group_statistics_and_updates_running_stats_from_clean_only(base,
                                                                                     grouped):
  _, _, m, model, state = base
  x, _, xs = grouped
  assert xs.shape == (3, 8, 8, 8, 3)
  key = jax.random.PRNGKey(0)
  outs, stats = jax.jit(m.forward_groups)(state.params, state.batch_stats, xs, key)

  train_pass = jax.jit(lambda x: apply_model(model, state.params, state.batch_stats, x,
                                             train=True, return_features=True))
  # group j's features are those of a training pass on group j alone
  for j in range(3):
    alone, _ = train_pass(xs[j])
    np.testing.assert_allclose(outs['features'][j], alone['features'], rtol=1e-4, atol=1e-5)
  # ... and differ from those of one joint pass (shared statistics)
  joint, joint_stats = train_pass(xs.reshape((-1, 8, 8, 3)))
  assert not np.allclose(outs['features'][1], joint['features'][8:16], atol=1e-3)

  # running statistics: exactly the clean-only update
  _, clean_stats = train_pass(x)
  chex.assert_trees_all_close(stats[MAIN], clean_stats[MAIN], rtol=1e-5, atol=1e-6)
  assert not np.allclose(stats[MAIN]['stem_bn']['var'], joint_stats[MAIN]['stem_bn']['var'])

  # ablation (w/o selective BN): one batch, running statistics from every group
  m_joint = methods.get('auxtrain')(_config(auxtrain_selective_bn=False))
  m_joint.setup(m.ctx)
  outs_j, stats_j = jax.jit(m_joint.forward_groups)(state.params, state.batch_stats, xs, key)
  chex.assert_trees_all_close(stats_j[MAIN], joint_stats[MAIN], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(outs_j['features'][1], joint['features'][8:16], rtol=1e-4,
                             atol=1e-5)


# ----------------------------------------------------------------------------- distillation


@pytest.fixture(scope='module')
def term_grads(base, grouped):
  """Gradients of lambda * sum_j [KL_j + gamma ||FC_0 - FC_j||^2] alone (alpha_0 = alpha_j = 0,
  lambda = 1) at gamma = 0 and gamma = 1, from one compiled function (gamma is traced)."""
  _, _, m, _, state = _variant(base, auxtrain_alpha_primary=0.0, auxtrain_alpha_aux=0.0,
                               auxtrain_lambda=1.0)
  _, y, xs = grouped

  def loss(params, heads, gamma):
    return m.loss_terms(params, heads, state.batch_stats, xs, y, gamma, jax.random.PRNGKey(0))[0]
  grads = jax.jit(jax.grad(loss, argnums=(0, 1)))
  return m, state, grads, {g: grads(state.params, state.extras['heads'], jnp.float32(g))
                           for g in (0.0, 1.0)}


def test_distillation_gradient_does_not_reach_primary_classifier_through_teacher(term_grads):
  _, _, _, by_gamma = term_grads
  g_params, g_heads = by_gamma[0.0]  # the distillation term alone
  # The primary FC only appears on the teacher side: exactly zero gradient.
  for leaf in jax.tree.leaves(g_params['classifier']):
    assert np.all(np.asarray(leaf) == 0.0)
  # The student side learns: the heads, and the shared backbone through the corrupted features.
  assert float(optax.tree.norm(g_heads['fc'])) > 0
  assert float(optax.tree.norm(g_params['stem_conv'])) > 0

  # Control: the KL itself does depend on the teacher, so a zero gradient means the teacher
  # side is cut, not that the classifier is unused.
  t, z = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 10))

  def kl_no_stop(teacher):
    log_p, log_q = jax.nn.log_softmax(teacher), jax.nn.log_softmax(z)
    return jnp.mean(jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1))
  assert float(jnp.abs(jax.grad(kl_no_stop)(t)).sum()) > 0
  assert float(jnp.abs(jax.grad(lambda t: common.distillation_kl(t, z))(t)).sum()) == 0


def test_weight_merging_gradient_pulls_primary_and_auxiliary_fc_together(term_grads):
  _, state, _, by_gamma = term_grads
  # Eq. 6 is linear in gamma: the difference of the gradients is the merging term's gradient.
  d_params = jax.tree.map(jnp.subtract, by_gamma[1.0][0], by_gamma[0.0][0])
  d_heads = jax.tree.map(jnp.subtract, by_gamma[1.0][1], by_gamma[0.0][1])
  primary, aux = state.params['classifier'], state.extras['heads']['fc']
  for k in ('kernel', 'bias'):  # d/dW_0 = 2 sum_j (W_0 - W_j), d/dW_j = -2 (W_0 - W_j)
    diff = primary[k][None] - aux[k]
    np.testing.assert_allclose(d_params['classifier'][k], 2 * diff.sum(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(d_heads['fc'][k], -2 * diff, rtol=1e-4, atol=1e-5)
  # it touches nothing but the FC layers
  assert float(optax.tree.norm(d_params['stem_conv'])) == 0.0
  assert float(optax.tree.norm(d_heads['conv1'])) == 0.0
  # and a gradient step on it brings the FC layers together
  lr = 0.05
  before = aux_heads.classifier_distance(primary, state.extras['heads'])
  after = aux_heads.classifier_distance(
      jax.tree.map(lambda w, g: w - lr * g, primary, d_params['classifier']),
      jax.tree.map(lambda w, g: w - lr * g, state.extras['heads'], d_heads))
  assert np.all(np.asarray(after) < np.asarray(before))


# ----------------------------------------------------------------------------- steps


@pytest.fixture(scope='module')
def run(base):
  """8 training steps; weight merging switches on at step 5."""
  config, mesh, m, model, host_state = base
  m.train_step = chex.assert_max_traces(m.train_step, n=1)
  state = parallel.replicate(_snapshot(host_state), mesh)
  step = train.make_train_step(m, config, mesh)
  first = _snapshot(state)
  history = []
  for batch in _batches(8):
    state, metrics = step(state, parallel.shard_batch(batch, mesh))
    history.append((_snapshot(state), _snapshot(metrics)))
  return dict(config=config, m=m, model=model, first=first, history=history, state=state)


def test_step_updates_running_statistics_from_clean_group_only(run):
  first = run['first']
  x = _batches(1)[0]['image']
  _, clean_stats = jax.jit(lambda x: apply_model(run['model'], first.params, first.batch_stats,
                                                 x, train=True))(x)
  after = run['history'][0][0].batch_stats
  chex.assert_trees_all_close(after[MAIN], clean_stats[MAIN], rtol=1e-5, atol=1e-6)


def test_weight_merging_can_start_at_a_configured_epoch():
  # 5 steps per epoch: epoch 0.4 is step 2, whatever the fraction says
  _, _, m, _, _ = _setup(auxtrain_merge_epoch=0.4)
  assert m.merge_step == 2
  np.testing.assert_array_equal([float(m.gamma_at(s)) for s in range(4)], [0, 0, 1, 1])
  assert _setup()[2].merge_step == 5  # -1: the fraction (0.5 of 10 steps)


def test_weight_merging_is_zero_before_switch_and_on_after(run):
  assert run['m'].merge_step == 5
  for i, (_, met) in enumerate(run['history']):
    # gamma_t is 0 in period 1 and 1 from the switch step on
    assert float(met['gamma']) == (1.0 if i >= 5 else 0.0)
    # the loss is Eq. 7 with that gamma (2 heads, alpha_j = lambda = 0.05): in period 1 the
    # merging term contributes nothing although the FC layers differ
    expected = (met['ce_primary'] + 0.05 * 2 * met['ce_aux'] + 0.05 * 2 * met['kl']
                + 0.05 * met['gamma'] * met['fc_distance'])
    np.testing.assert_allclose(met['loss'], expected, rtol=1e-5)
    assert float(met['fc_distance']) > 1.0

  def distance(state):
    return float(aux_heads.classifier_distance(state.params['classifier'],
                                               state.extras['heads']).sum())
  d = np.array([distance(run['first'])] + [distance(s) for s, _ in run['history']])
  drops = -np.diff(d)  # drops[i]: change made by step i
  # after the switch the FC layers approach each other much faster than before it
  assert np.all(drops[5:] > 0)
  assert drops[5:].mean() > 3 * max(drops[:5].mean(), 0.0)


def test_compiles_once_and_export_is_the_plain_backbone(run):
  r = run
  state, m, model = r['state'], r['m'], r['model']
  assert int(state.step) == 8  # the step traced once across the switch (assert_max_traces)
  exported = m.export(state)
  plain = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(1), jnp.zeros((1, 8, 8, 3)),
                                            train=False))
  plain_params, plain_stats = plain['params'], plain['batch_stats']
  assert (jax.tree.structure(exported['params']) == jax.tree.structure(plain_params))
  assert jax.tree.structure(exported['batch_stats']) == jax.tree.structure(plain_stats)
  assert models.count_params(exported['params']) == models.count_params(plain_params)
  assert models.count_params(state.extras['heads']) > 0  # the heads existed, and are dropped
  x = jnp.asarray(_batches(1, seed=5)[0]['image'])
  deployed, primary = jax.jit(lambda v, p, s, x: (
      model.apply(v, x, train=False), apply_model(model, p, s, x, train=False)[0]))(
          parallel.to_host(exported), state.params, state.batch_stats, x)
  np.testing.assert_array_equal(np.asarray(deployed), np.asarray(primary))


def test_adversarial_variant_trains_primary_on_pgd_examples(base):
  config, mesh, m, model, host_state = _variant(base, auxtrain_adversarial=True,
                                                auxtrain_attack='advprop_pgd3')
  batch = _batches(1)[0]
  x, y = jnp.asarray(batch['image']), jnp.asarray(batch['label'])
  # the step's rng on device 0 of a 1-device mesh, and its split (see train_step)
  rng = jax.random.fold_in(jax.random.fold_in(host_state.rng, 0), 0)
  _, k_attack, _ = jax.random.split(rng, 3)
  x_adv = jax.jit(m.primary_inputs)(host_state.params, host_state.batch_stats, x, y, k_attack)
  assert float(jnp.max(jnp.abs(x_adv - x))) <= 2 / 255 + 1e-6
  assert not np.allclose(x_adv, x)
  train_pass = jax.jit(lambda z: apply_model(model, host_state.params, host_state.batch_stats, z,
                                             train=True))
  (logits_adv, adv_stats), (logits_clean, _) = train_pass(x_adv), train_pass(x)
  assert float(common.cross_entropy(logits_adv, y)) > float(common.cross_entropy(logits_clean, y))

  state = parallel.replicate(_snapshot(host_state), mesh)
  step = train.make_train_step(m, config, mesh)
  state, metrics = step(state, parallel.shard_batch(batch, mesh))
  # running statistics come from the primary (adversarial) group
  chex.assert_trees_all_close(parallel.to_host(state.batch_stats[MAIN]), adv_stats[MAIN],
                              rtol=1e-4, atol=1e-5)
  assert np.isfinite(float(metrics['loss']))
  assert 'adv_accuracy' in metrics and 'accuracy' not in metrics  # named as PGD-AT names it


def test_adversarial_variant_crafts_through_dropout(base):
  """A WideResNet with dropout: crafting gets its own dropout key (it used to get none)."""
  _, _, m, _, _ = _variant(base, auxtrain_adversarial=True, auxtrain_attack='advprop_pgd1')
  model = models.create_model('wrn10_1', num_classes=10, dropout_rate=0.3)
  m.setup(dataclasses.replace(m.ctx, model=model))
  params, batch_stats = models.init_variables(model, jax.random.PRNGKey(0), (8, 8, 3),
                                              [MAIN])
  batch = _batches(1)[0]
  x, y = jnp.asarray(batch['image']), jnp.asarray(batch['label'])
  x_adv = jax.jit(m.primary_inputs)(params, batch_stats, x, y, jax.random.PRNGKey(1))
  assert float(jnp.max(jnp.abs(x_adv - x))) <= 1 / 255 + 1e-6
  assert not np.allclose(x_adv, x)


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize('overrides,match', [
    (dict(auxtrain_corruptions=('gaussian_noise', 'fuzz')), "unknown corruption 'fuzz'"),
    (dict(auxtrain_corruptions=()), 'at least one'),
    (dict(auxtrain_corruptions=('rotation', 'rotation'), auxtrain_severities=(1, 2)),
     'duplicates'),
    (dict(auxtrain_severities=(3,)), 'one severity per corruption'),
    (dict(auxtrain_severities=(3, 6)), 'valid: \\(1, 2, 3, 4, 5\\)'),
    (dict(auxtrain_lambda=-0.1), 'auxtrain_lambda must be >= 0'),
    (dict(auxtrain_alpha_aux=(0.1, 0.1, 0.1)), 'one per corruption'),
    (dict(auxtrain_merge_fraction=1.5), 'auxtrain_merge_fraction must be in \\[0, 1\\]'),
    (dict(auxtrain_merge_fraction=True), 'auxtrain_merge_fraction must be in .*got True'),
    (dict(auxtrain_merge_epoch=2.0), r'auxtrain_merge_epoch must be -1 .* \[0, num_epochs=1.0\]'),
    (dict(auxtrain_temperature='2'), "auxtrain_temperature must be > 0, got '2'"),
    (dict(auxtrain_adversarial=True, auxtrain_attack='pgd_9000'), 'allowed presets'),
    # TRADES's preset maximises a KL to the clean output, not the primary's CE
    (dict(auxtrain_adversarial=True, auxtrain_attack='trades'), 'allowed presets'),
    (dict(auxtrain_adversarial=True, auxtrain_num_steps=0), 'auxtrain_num_steps'),
    (dict(auxtrain_num_steps=3), 'auxtrain_num_steps only apply to the adversarial variant'),
    (dict(auxtrain_adversarial='False'), "auxtrain_adversarial must be True or False, got 'False'"),
])
def test_bad_config_raises(overrides, match):
  with pytest.raises(ValueError, match=match):
    methods.get('auxtrain')(_config(**overrides))


@pytest.mark.parametrize('name', ['auxtrain_cifar10', 'auxtrain_cifar100', 'auxtrain_imagenet'])
def test_configs_load_and_validate(name):
  import importlib  # pylint: disable=g-import-not-at-top
  c = importlib.import_module(f'configs.{name}').get_config()
  train.validate_config(c)
  m = methods.get(c.method)(c)
  assert m.corruption_names == ('gaussian_noise', 'gaussian_blur', 'rotation',
                                'contrast_brightness')
  assert (c.auxtrain_alpha_primary, c.auxtrain_alpha_aux, c.auxtrain_lambda) == (1.0, 0.05, 0.05)
  # the CPU-sized recipe's overrides
  c.dataset, c.model, c.num_epochs, c.lr_schedule = 'digits', 'resnet8_wide', 5.0, 'onecycle'
  train.validate_config(c)


# ----------------------------------------------------------------------------- end to end


def test_digits_end_to_end(tmp_path):
  """The paper's four corruptions on 8x8x1 digits, 8 simulated devices, synchronised BN."""
  config = tiny_config(method='auxtrain', num_epochs=0.25, checkpoint_every_steps=0,
                       sync_batch_stats=True)  # also exercises BN synchronised in every group
  state, results = train.train_and_evaluate(config, str(tmp_path))
  assert results['step'] == int(state.step) > 0
  assert 0.0 <= results['eval_top1'] <= 1.0 and np.isfinite(results['eval_loss'])
  assert state.extras['heads']['fc']['kernel'].shape[0] == 4
  assert (tmp_path / 'metrics.jsonl').exists()
  # The heads-vs-primary analysis reads the saved heads; its primary path under running
  # statistics is exactly the evaluation runner's corruption accuracy (same images and noise).
  run = runner.load_run(str(tmp_path), with_method=True)
  res = auxtrain_heads.primary_and_head_accuracy(run, severities=(3,), max_examples=64)
  assert set(res) == set(auxtrain.DEFAULT_CORRUPTIONS) and all(set(r) == {3} for r in res.values())
  errors = runner.corruption_suite(run, names=['gaussian_noise', 'rotation'], severities=(3,),
                                   max_examples=64)['errors']
  for name in ('gaussian_noise', 'rotation'):
    assert res[name][3]['primary_running'] == pytest.approx(1.0 - errors[name][3])
  assert all(0.0 <= v <= 1.0 for r in res.values() for v in r[3].values())
  with pytest.raises(ValueError, match='with_method=True'):
    auxtrain_heads.primary_and_head_accuracy(runner.load_run(str(tmp_path)))
  # Under batch statistics a padded batch is skipped: 40 images in batches of 32 score the
  # first batch only, as 32 images do; under running statistics the 8 more count.
  run.config.eval_batch_size = 32
  r40, r32 = (auxtrain_heads.primary_and_head_accuracy(run, severities=(3,), max_examples=n)
              for n in (40, 32))
  for name in res:
    assert r40[name][3]['primary_batch'] == r32[name][3]['primary_batch']
    assert r40[name][3]['head_batch'] == r32[name][3]['head_batch']
  with pytest.raises(ValueError, match='Every eval batch has padding'):
    auxtrain_heads.primary_and_head_accuracy(run, severities=(3,), max_examples=20)
