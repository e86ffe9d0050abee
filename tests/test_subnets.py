"""EWS subnets: masks equal explicitly zeroed networks, rounding, slot layout, one compilation."""

import copy

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrobust import models
from jaxrobust.models import resnet, subnets
from jaxrobust.models.controller import SubnetController, init_controller, sample_subnets

# Two stages: stage 1 keeps the shape (identity shortcut), stage 2 downsamples (projection).
ARCHS = {
    'basic': dict(stage_sizes=(1, 1), widths=(8, 16), stem_width=8, block='basic'),
    'bottleneck': dict(stage_sizes=(1, 1), widths=(4, 8), stem_width=16, block='bottleneck'),
    'preact_basic': dict(stage_sizes=(1, 1), widths=(8, 16), stem_width=8, block='preact_basic'),
    'preact_bottleneck': dict(stage_sizes=(1, 1), widths=(4, 8), stem_width=16,
                              block='preact_bottleneck'),
}
# The BN that follows each conv of a post-activation block.
POST_BN = {'conv1': 'bn1', 'conv2': 'bn2', 'conv3': 'bn3', 'shortcut_conv': 'shortcut_bn'}


def random_variables(model, image_shape=(8, 8, 3), seed=0):
  """Random parameters and running statistics of the model's shapes.

  Drawn with numpy from ``eval_shape``: no initialiser is compiled (slow on a busy CPU), and
  BN scales/biases and running statistics are non-trivial, so eval mode is a real check too.
  """
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1,) + image_shape),
                                             train=False))

  def draw(path, s):
    name = path[-1].key
    if name == 'kernel':
      fan_in = int(np.prod(s.shape[:-1]))
      return (rng.normal(size=s.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    if name in ('scale', 'var'):
      return rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
    return rng.normal(scale=0.1, size=s.shape).astype(np.float32)  # bias, mean
  return jax.tree_util.tree_map_with_path(draw, shapes)


def _setup(block):
  model = resnet.ResNet(num_classes=5, **ARCHS[block])
  x = jax.random.uniform(jax.random.key(1), (6, 8, 8, 3))
  return model, random_variables(model), x


def _zeroed_params(params, space, masks, preact):
  """An independent reference: the subnet as a copy of the parameters with weights zeroed.

  Post-activation blocks: a dropped channel of a layer zeroes the scale and bias of the BN after
  its conv (so ``bn(conv)`` and ``relu(bn(conv))`` are exactly 0 there); a dropped path zeroes
  its last BN. Pre-activation blocks: a dropped channel of an inner conv zeroes the matching
  *input* slice of the next conv, of the last conv (or the shortcut conv) its output slice; a
  dropped path zeroes its last conv.
  """
  p = jax.tree.map(np.array, params)
  for b in space.blocks:
    bp, m = p[b.name], jax.tree.map(np.asarray, masks[b.name])
    res = list(b.residual_layers)
    for name, _ in b.layers:
      drop = m[name] == 0
      if not preact:
        bp[POST_BN[name]]['scale'][drop] = 0
        bp[POST_BN[name]]['bias'][drop] = 0
      elif name in res[:-1]:
        bp[res[res.index(name) + 1]]['kernel'][..., drop, :] = 0
      else:
        bp[name]['kernel'][..., drop] = 0
    last = {subnets.RESIDUAL: res[-1], subnets.SHORTCUT: 'shortcut_conv'}
    for path in (subnets.RESIDUAL, subnets.SHORTCUT):
      if m['path'][path] == 0:
        assert last[path] in bp, 'identity shortcuts cannot be zeroed through parameters'
        if preact:
          bp[last[path]]['kernel'][...] = 0
        else:
          bp[POST_BN[last[path]]]['scale'][...] = 0
          bp[POST_BN[last[path]]]['bias'][...] = 0
  return p


@pytest.mark.parametrize('block', sorted(ARCHS))
def test_subnet_equals_explicitly_zeroed_network(block):
  model, variables, x = _setup(block)
  space = subnets.subnet_space(model, 0.5, params=variables['params'])
  ident, proj = space.blocks  # stage1: identity shortcut, stage2: projection
  assert not ident.has_projection and proj.has_projection
  preact = block.startswith('preact')

  @jax.jit  # one compilation per architecture (compiles dominate on a busy CPU)
  def logits(masks, zeroed_params):
    zeroed = {'params': zeroed_params, 'batch_stats': variables['batch_stats']}
    return {train: (model.apply(variables, x, train=train, subnet=masks),
                     model.apply(zeroed, x, train=train)) for train in (True, False)}

  full = logits(space.full(), variables['params'])
  for train in (True, False):  # all-ones masks are the full network (up to XLA's fusions)
    np.testing.assert_allclose(full[train][0], full[train][1], rtol=1e-5, atol=1e-6)
  for seed in range(2):
    masks = jax.jit(space.random)(jax.random.key(seed))
    # Identity shortcuts have no weights to zero: keep them here (the next test covers them).
    masks[ident.name]['path'] = jnp.array([1.0, 1.0])
    masks[proj.name]['path'] = jnp.array([[1.0, 0.0], [0.0, 1.0]][seed])
    out = logits(masks, _zeroed_params(variables['params'], space, masks, preact))
    for train in (True, False):
      got, want = map(np.asarray, out[train])
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
      assert np.abs(got - np.asarray(full[train][0])).max() > 1e-3  # a real subnet


@pytest.mark.parametrize('block', ['basic', 'preact_basic'])
def test_dropping_an_identity_shortcut(block):
  model, variables, x = _setup(block)
  space = subnets.subnet_space(model, 0.5, params=variables['params'])
  name = space.blocks[0].name

  def block_io(path):
    masks = space.full()
    masks[name]['path'] = jnp.array(path, jnp.float32)
    _, inter = model.apply(variables, x, train=False, subnet=masks, capture_intermediates=True,
                           mutable=['intermediates'])
    inter = inter['intermediates']
    out = inter[name]['__call__'][0]
    last = inter[name]['bn2' if block == 'basic' else 'conv2']['__call__'][0]
    block_in = inter['stem_bn' if block == 'basic' else 'stem_conv']['__call__'][0]
    if block == 'basic':
      block_in = jax.nn.relu(block_in)
    return out, last, block_in

  block_io = jax.jit(block_io)
  out, residual, block_in = block_io([1.0, 0.0])  # residual branch only
  act = jax.nn.relu if block == 'basic' else (lambda v: v)
  np.testing.assert_allclose(out, act(residual), rtol=1e-6, atol=1e-6)
  assert np.abs(np.asarray(out - act(residual + block_in))).max() > 1e-3
  out, _, block_in = block_io([0.0, 1.0])  # shortcut only: the block is the identity
  np.testing.assert_allclose(out, act(block_in), rtol=1e-6, atol=1e-6)


def test_rounding_drops_a_path_for_rho_up_to_half_and_always_drops_channels():
  for rho in (0.1, 0.3, 0.5):
    assert subnets.num_kept(rho, 2) == 1  # ceil(2 rho) would also give 1 here...
  for rho in (0.55, 0.7):
    assert subnets.num_kept(rho, 2) == 1  # ...but 2 (no path choice at all) here
  assert subnets.num_kept(0.75, 2) == 2 and subnets.num_kept(0.9, 2) == 2
  assert [subnets.num_kept(0.5, c, keep_one_out=True) for c in (1, 2, 3, 8, 64)] == [1, 1, 2, 4, 32]
  # For every rho < 1, each channel slot drops at least one channel, even where both paths stay.
  for rho in (0.6, 0.75, 0.9, 0.99):
    for c in (2, 3, 8, 64, 2048):
      assert 1 <= subnets.num_kept(rho, c, keep_one_out=True) <= c - 1
  assert subnets.num_kept(0.7, 64, keep_one_out=True) == 45
  assert subnets.num_kept(1.0, 64, keep_one_out=True) == 64
  for bad in (0.0, -0.5, 1.5, 'half'):
    with pytest.raises(ValueError, match='rho'):
      subnets.num_kept(bad, 4)

  model = models.create_model('resnet_tiny', num_classes=10)
  space = subnets.subnet_space(model, 0.9)
  masks = jax.jit(space.random)(jax.random.key(0))
  frac = subnets.kept_fraction(space, masks)
  assert float(frac['paths']) == 1.0 and 0.8 < float(frac['channels']) < 1.0


def test_slot_layout_matches_published_architectures_and_controller():
  cases = {'resnet50': (16, 16 * 4 + 4), 'preact_resnet18': (8, 8 * 3 + 3),
           'wrn28_10': (12, 12 * 3 + 3), 'resnet20': (9, 9 * 3 + 2)}
  for name, (num_blocks, num_slots) in cases.items():
    space = subnets.subnet_space(models.create_model(name, num_classes=10), 0.5)
    assert len(space.blocks) == num_blocks and len(space.slots) == num_slots, name
  space = subnets.subnet_space(models.create_model('resnet50', num_classes=10), 0.5)
  b = space.blocks[0]
  assert b.name == 'stage1_block1'
  assert b.layers == (('conv1', 64), ('conv2', 64), ('conv3', 256), ('shortcut_conv', 256))
  assert space.slots[:5] == ((2, 1), (64, 32), (64, 32), (256, 128), (256, 128))
  assert space.blocks[-1].name == 'stage4_block3'
  # WideResNet's first block widens 16 -> 160 channels: a projection shortcut.
  wrn = subnets.subnet_space(models.create_model('wrn28_10', num_classes=10), 0.5)
  assert wrn.blocks[0].has_projection and not wrn.blocks[1].has_projection

  # A controller over the space's slots drives the model.
  model = models.create_model('resnet_tiny', num_classes=10)
  variables = random_variables(model)
  params, stats = variables['params'], {'main': variables['batch_stats']}
  space = subnets.subnet_space(model, 0.5, params=params)
  ctl = SubnetController(slots=space.slots, hidden_size=16, embed_dim=16)
  cparams = jax.jit(init_controller, static_argnums=0)(ctl, jax.random.key(1))
  sample = jax.jit(sample_subnets, static_argnums=(0, 3))(ctl, cparams, jax.random.key(2), 3)
  masks = space.from_slot_masks(sample.masks)
  assert masks['stage2_block1']['shortcut_conv'].shape == (3, 16)
  for (block, key), (c, m) in zip(space.keys, space.slots):
    np.testing.assert_array_equal(np.asarray(masks[block][key]).sum(-1), m)
  x = jax.random.uniform(jax.random.key(3), (4, 8, 8, 3))
  one = jax.tree.map(lambda a: a[0], masks)
  logits, _ = jax.jit(lambda m: models.apply_model(model, params, stats, x, train=True,
                                                    update_stats=False, subnet=m))(one)
  assert logits.shape == (4, 10)
  chex.assert_trees_all_equal(space.from_slot_masks(space.to_slot_masks(one)), one)


def test_one_compilation_serves_every_subnet():
  model = models.create_model('resnet_tiny', num_classes=10)
  variables = random_variables(model)
  params, stats = variables['params'], {'main': variables['batch_stats']}
  space = subnets.subnet_space(model, 0.5, params=params)
  x = jax.random.uniform(jax.random.key(3), (4, 8, 8, 3))
  random = jax.jit(space.random)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def forward(masks):
    return models.apply_model(model, params, stats, x, train=True, update_stats=False,
                              subnet=masks)[0]

  outs = [np.asarray(forward(random(jax.random.key(i)))) for i in range(3)]
  assert not np.allclose(outs[0], outs[1]) and not np.allclose(outs[1], outs[2])


def test_lowest_l1_block_restricted_and_residual_drop():
  model = models.create_model('resnet_tiny', num_classes=10)
  params = random_variables(model)['params']
  space = subnets.subnet_space(model, 0.5, params=params)
  masks = jax.tree.map(np.asarray, jax.jit(space.lowest_l1)(params))
  for b in space.blocks:
    for name, c in b.layers:
      l1 = np.abs(np.asarray(params[b.name][name]['kernel'])).sum(axis=(0, 1, 2))
      m = subnets.num_kept(0.5, c, keep_one_out=True)
      np.testing.assert_array_equal(np.flatnonzero(masks[b.name][name]),
                                    np.sort(np.argsort(l1)[:m]))
  # Paths: mean |w| over the path's kernels; the identity shortcut scores 1/C (mean |I|).
  projection = np.abs(params['stage2_block1']['shortcut_conv']['kernel']).mean()
  for b, shortcut in (('stage1_block1', 1 / 8), ('stage2_block1', projection)):
    residual = np.mean([np.abs(params[b][n]['kernel']).mean() for n in ('conv1', 'conv2')])
    expected = [1.0, 0.0] if residual < shortcut else [0.0, 1.0]
    np.testing.assert_array_equal(masks[b]['path'], expected)

  only = jax.jit(space.random_in_block, static_argnums=1)(jax.random.key(5), 'stage2_block1')
  full = space.full()
  chex.assert_trees_all_equal(only['stage1_block1'], full['stage1_block1'])
  assert float(jnp.sum(only['stage2_block1']['conv1'])) == 8.0
  dropped = space.drop_residual('stage1_block1')
  np.testing.assert_array_equal(dropped['stage1_block1']['path'], [0.0, 1.0])
  chex.assert_trees_all_equal(dropped['stage2_block1'], full['stage2_block1'])
  with pytest.raises(ValueError, match='Unknown block'):
    space.drop_residual('stage9_block1')
  with pytest.raises(ValueError, match='slots'):
    space.from_slot_masks(space.to_slot_masks(full)[:-1])
  with pytest.raises(ValueError, match='No residual blocks'):
    subnets.blocks_from_params({'classifier': {}})
  assert copy.copy(space) == space and hash(space) == hash(subnets.subnet_space(model, 0.5))
