"""Tests for the EWS LSTM subnet controller and its policy-gradient helpers."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrobust.models.controller import (SubnetController, init_controller, log_prob,
                                         reinforce_loss, sample_subnets, update_baseline)

TINY = ((3, 2), (2, 1))
# Jitted once per controller (modules are hashable static arguments) to keep the tests fast.
_log_prob = jax.jit(log_prob, static_argnums=0)
_sample = jax.jit(sample_subnets, static_argnums=(0, 3))
_init = jax.jit(init_controller, static_argnums=0)


def _outcomes(slots):
  """Every ordered outcome: per slot an ordered tuple of m distinct candidates."""
  per_slot = [list(itertools.permutations(range(c), m)) for c, m in slots]
  return list(itertools.product(*per_slot))


def _enumerate(ctl, params):
  """{outcome: (prob, entropy_estimate)} by brute force over all ordered outcomes."""
  table = {}
  for o in _outcomes(ctl.slots):
    lp, ent = _log_prob(ctl, params, tuple(jnp.array(x, jnp.int32) for x in o))
    table[o] = (float(np.exp(lp)), float(ent))
  return table


@pytest.fixture(scope='module')
def tiny():
  # A large init scale makes the policy far from uniform, so the checks below are sharp.
  ctl = SubnetController(slots=TINY, init_scale=1.0)
  return ctl, _init(ctl, jax.random.key(0))


def test_log_prob_normalises_and_entropy_is_unbiased(tiny):
  ctl, params = tiny
  table = _enumerate(ctl, params)
  assert len(table) == 6 * 2
  probs = np.array([p for p, _ in table.values()])
  np.testing.assert_allclose(probs.sum(), 1.0, atol=1e-5)
  assert probs.max() / probs.min() > 2  # genuinely non-uniform
  # E[sum of per-draw conditional entropies] = entropy of the ordered sequence (chain rule).
  exact_entropy = -np.sum(probs * np.log(probs))
  estimate = sum(p * e for p, e in table.values())
  np.testing.assert_allclose(estimate, exact_entropy, rtol=1e-4)


def test_sampling_frequencies_match_log_prob(tiny):
  ctl, params = tiny
  table = _enumerate(ctl, params)
  n = 20000
  s = _sample(ctl, params, jax.random.key(1), n)
  idx0, idx1 = np.asarray(s.indices[0]), np.asarray(s.indices[1])
  counts = {o: 0 for o in table}
  for a, b in zip(map(tuple, idx0), map(tuple, idx1)):
    counts[(a, b)] += 1
  for o, (p, _) in table.items():
    tol = 4.5 * np.sqrt(p * (1 - p) / n) + 1e-3
    assert abs(counts[o] / n - p) < tol, (o, counts[o] / n, p)
  # The log-prob returned with each sample is the one log_prob() gives for its indices.
  for i in range(5):
    expected = table[(tuple(idx0[i]), tuple(idx1[i]))][0]
    np.testing.assert_allclose(np.exp(float(s.log_prob[i])), expected, rtol=1e-5)


def test_next_decision_depends_on_chosen_set_not_order(tiny):
  ctl, params = tiny
  table = _enumerate(ctl, params)

  def conditional(a):  # P(slot-1 outcome | slot-0 ordered outcome a)
    joint = np.array([table[(a, (b,))][0] for b in range(2)])
    return joint / joint.sum()

  # Average embedding of the chosen set: the same set in another order gives the same input...
  np.testing.assert_allclose(conditional((0, 2)), conditional((2, 0)), rtol=1e-5)
  # ...while a different set gives a different next distribution.
  assert np.abs(conditional((0, 1)) - conditional((1, 2))).max() > 1e-3


def test_masks_have_exactly_m_ones_within_first_c():
  # Wide slots and a peaked policy (large init scale) exercise the numerics too.
  slots = ((2, 1), (16, 8), (5, 3), (32, 16), (1, 1), (7, 2), (32, 32), (32, 1))
  ctl = SubnetController(slots=slots, init_scale=3.0)
  params = _init(ctl, jax.random.key(0))
  s = _sample(ctl, params, jax.random.key(3), 8)
  assert s.log_prob.shape == (8,) and s.entropy.shape == (8,)
  for k, (c, m) in enumerate(slots):
    masks, idx = np.asarray(s.masks[k]), np.asarray(s.indices[k])
    assert masks.shape == (8, c) and idx.shape == (8, m)
    assert set(np.unique(masks)) <= {0.0, 1.0}
    np.testing.assert_array_equal(masks.sum(1), m)
    for i in range(8):
      assert len(set(idx[i])) == m and idx[i].min() >= 0 and idx[i].max() < c
      np.testing.assert_array_equal(np.flatnonzero(masks[i]), np.sort(idx[i]))
  assert len({tuple(np.asarray(s.indices[3][i])) for i in range(8)}) > 1  # samples differ
  assert np.all(np.isfinite(np.asarray(s.log_prob))) and np.all(np.asarray(s.entropy) >= 0)
  # The sample's log-prob is what log_prob() gives for its indices; gradients of the log-prob
  # and of the entropy estimate are finite (one compilation for both checks).
  def lp_plus_entropy(p, ix):
    lp, ent = log_prob(ctl, p, ix)
    return lp + ent, lp

  (_, lps), grads = jax.jit(jax.vmap(jax.value_and_grad(lp_plus_entropy, has_aux=True),
                                     in_axes=(None, 0)))(params, s.indices)
  np.testing.assert_allclose(np.asarray(lps), np.asarray(s.log_prob), rtol=1e-5, atol=1e-5)
  for leaf in jax.tree.leaves(grads):
    assert np.all(np.isfinite(np.asarray(leaf))) and np.abs(np.asarray(leaf)).max() > 0


def test_policy_gradient_raises_probability_of_rewarded_subnets(tiny):
  ctl, params = tiny
  params = jax.tree.map(lambda p: 0.1 * p, params)  # near-uniform start

  def prob_cand0(p):  # exact P(candidate 0 among slot 0's choices)
    return sum(q for o, (q, _) in _enumerate(ctl, p).items() if 0 in o[0])

  opt = optax.adam(0.05)
  opt_state = opt.init(params)

  @jax.jit
  def step(params, opt_state, baseline, rng):
    s = sample_subnets(ctl, params, rng, 8)
    rewards = s.masks[0][:, 0]  # 1 if candidate 0 of slot 0 is chosen

    def loss_fn(p):
      lps, ents = jax.vmap(lambda ix: log_prob(ctl, p, ix))(s.indices)
      return reinforce_loss(lps, rewards, baseline, ents, 1e-3)

    grads = jax.grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state,
            update_baseline(baseline, rewards, 0.9))

  before = prob_cand0(params)
  baseline = jnp.float32(0.0)
  for i in range(20):
    params, opt_state, baseline = step(params, opt_state, baseline, jax.random.key(100 + i))
  after = prob_cand0(params)
  assert 0.55 < before < 0.8  # near-uniform start: 2/3
  assert after > before + 0.2, (before, after)
  assert step._cache_size() == 1  # one compilation for every sampled subnet


def test_reinforce_loss_and_baseline():
  lps = jnp.array([-1.0, -2.0, -0.5])
  rewards = jnp.array([1.0, 0.0, 2.0])
  ents = jnp.array([0.3, 0.2, 0.1])
  loss = reinforce_loss(lps, rewards, 0.5, ents, 0.1)
  adv = np.array([0.5, -0.5, 1.5])
  np.testing.assert_allclose(float(loss), -np.mean(adv * np.array([-1, -2, -0.5])) - 0.1 * 0.2,
                             rtol=1e-6)
  g_lp, g_r, g_b, g_e = jax.grad(reinforce_loss, argnums=(0, 1, 2, 3))(lps, rewards,
                                                                         jnp.float32(0.5), ents,
                                                                         0.1)
  np.testing.assert_allclose(np.asarray(g_lp), -adv / 3, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(g_e), -0.1 / 3 * np.ones(3), rtol=1e-6)
  assert float(jnp.abs(g_r).sum()) == 0 and float(g_b) == 0  # rewards/baseline are constants
  np.testing.assert_allclose(float(update_baseline(jnp.float32(2.0), rewards, 0.9)),
                             0.9 * 2.0 + 0.1 * 1.0, rtol=1e-6)
  with pytest.raises(ValueError, match='decay'):
    update_baseline(0.0, rewards, 1.5)
  with pytest.raises(ValueError, match='entropy_weight'):
    reinforce_loss(lps, rewards, 0.0, ents, -1.0)


@pytest.mark.parametrize('slots', [(), ((3, 0),), ((2, 3),), ((0, 0),), 'abc'])
def test_bad_slots_raise(slots):
  with pytest.raises(ValueError, match='slot'):
    SubnetController(slots=slots)


def test_log_prob_rejects_wrong_shapes(tiny):
  ctl, params = tiny
  with pytest.raises(ValueError, match='slots'):
    log_prob(ctl, params, (jnp.array([0, 1]),))
  with pytest.raises(ValueError, match='m=2'):
    log_prob(ctl, params, (jnp.array([0]), jnp.array([1])))


@pytest.mark.parametrize('drawn', [(0,), (2, 0), (1, 3)])
def test_entropy_gradient_matches_the_direct_formula(drawn):
  # The entropy bonus trains the controller through this gradient, including the largest logit's
  # part (index 0 here), which a log-space shift to exactly the maximum used to drop.
  from jaxrobust.models.controller import _draw_stats  # pylint: disable=g-import-not-at-top
  logits = jnp.array([0.3, -0.2, 0.1, 0.05, -5.0])
  valid = jnp.array([True, True, True, True, False])
  idx, draw_valid = jnp.array(drawn, jnp.int32), jnp.ones(len(drawn), bool)

  def direct(l):  # sum over draws of the entropy of the softmax over what is still available
    total = 0.0
    for j in range(len(drawn)):
      avail = valid & ~jnp.isin(jnp.arange(5), jnp.array(drawn[:j], jnp.int32))
      q = jax.nn.softmax(jnp.where(avail, l, -jnp.inf))
      total -= jnp.sum(jnp.where(avail, q * jnp.log(jnp.where(avail, q, 1.0)), 0.0))
    return total

  def ours(l):
    return _draw_stats(jnp.where(valid, l, -1e9), valid, idx, draw_valid)[1]

  np.testing.assert_allclose(ours(logits), direct(logits), rtol=1e-5)
  g_ours, g_direct = jax.grad(ours)(logits), jax.grad(direct)(logits)
  np.testing.assert_allclose(g_ours, g_direct, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(jnp.sum(g_ours), 0.0, atol=1e-6)  # invariant to a common shift
