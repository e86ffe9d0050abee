"""Tests of jaxrobust.attacks: closed-form optima on linear models, feasibility of every iterate,
FGSM / I-FGSM / GD semantics, targeted attacks, restarts, APGD schedule and strength, tracing."""

import fractions
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrobust import attacks
from jaxrobust.attacks import autopgd
from jaxrobust.attacks import losses
from jaxrobust.attacks import parts
from jaxrobust.attacks import presets

SHAPE = (4, 4, 3)  # tiny images keep compilation and runtime small
D = int(np.prod(SHAPE))


@pytest.fixture(autouse=True, scope='module')
def _fast_compilation():
  """XLA's optimisation passes dominate the runtime of these tiny programs; skip them here."""
  previous = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', previous)


# ------------------------------------------------------------------------------------------------
# Models and data (numpy-generated: no eager jax ops to compile).
# ------------------------------------------------------------------------------------------------


def linear_model(seed=0, num_classes=2):
  """logits = W x + b on flattened images; returns (logits_fn, W, b) with numpy float64 copies."""
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(num_classes, D))
  b = rng.normal(size=(num_classes,))
  w32, b32 = jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32)

  def logits_fn(x):
    return x.reshape(x.shape[0], -1) @ w32.T + b32

  return logits_fn, w, b


def mlp_params(seed=0, hidden=32, num_classes=10, scale=10.0):
  rng = np.random.default_rng(seed)
  return {
      'w1': jnp.asarray(rng.normal(size=(D, hidden)) * scale / np.sqrt(D), jnp.float32),
      'b1': jnp.asarray(rng.normal(size=(hidden,)), jnp.float32),
      'w2': jnp.asarray(rng.normal(size=(hidden, num_classes)) * 3.0 / np.sqrt(hidden),
                        jnp.float32),
  }


def mlp_apply(params, x):
  """A small, strongly non-linear classifier (sin activations) with a non-trivial loss landscape."""
  h = jnp.sin(x.reshape(x.shape[0], -1) @ params['w1'] + params['b1'])
  return h @ params['w2']


MLP_PARAMS = mlp_params()


@jax.jit
def mlp(x):
  return mlp_apply(MLP_PARAMS, x)


def predict(logits_fn, x):
  return np.argmax(np.asarray(logits_fn(x)), axis=-1)


ce = jax.jit(losses.cross_entropy)


def np_norm(x_adv, x, norm):
  """Per-example perturbation norm, computed in numpy float64."""
  d = (np.asarray(x_adv, np.float64) - np.asarray(x, np.float64)).reshape(len(x), -1)
  return np.abs(d).max(axis=1) if norm == 'linf' else np.linalg.norm(d, axis=1)


def images(seed=1, batch=8, low=0.0, high=1.0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.uniform(low, high, size=(batch,) + SHAPE), jnp.float32)


def images_with_extremes(seed=1, batch=8):
  """Random images in which half of the pixels are exactly 0, 1 or within 1e-3 of them."""
  rng = np.random.default_rng(seed)
  x = rng.random(size=(batch,) + SHAPE)
  mask = rng.integers(0, 8, size=x.shape)
  x[mask == 0] = 0.0
  x[mask == 1] = 1.0
  x[mask == 2] = 1e-3 * rng.random(size=int((mask == 2).sum()))
  x[mask == 3] = 1.0 - 1e-3 * rng.random(size=int((mask == 3).sum()))
  return jnp.asarray(x, jnp.float32)


@functools.partial(jax.jit, static_argnums=(0, 1), static_argnames=('static',))
def attack(name, logits_fn, x, y, rng, static=(), **traced):
  """Runs ``attacks.get(name)`` under jit; ``static`` is a tuple of (key, value) pairs.

  One module-level jitted function lets tests with the same attack configuration share a compile.
  """
  return attacks.get(name)(logits_fn, x, y, rng, **dict(static), **traced)


# ------------------------------------------------------------------------------------------------
# PGD finds the closed-form optimum of a linear model.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('norm', ['linf', 'l2'])
def test_pgd_finds_closed_form_optimum_of_linear_model(norm):
  logits_fn, w, b = linear_model()
  # Away from the [0, 1] boundary so that clipping is inactive at the optimum.
  x = images(seed=3, batch=6, low=0.3, high=0.7)
  y = jnp.array([0, 1, 0, 1, 0, 1])
  eps = 0.05 if norm == 'linf' else 0.25
  step_size = eps / 4 if norm == 'linf' else eps / 2
  x_adv = attack('pgd', logits_fn, x, y, jax.random.key(0),
                 static=(('num_steps', 30), ('norm', norm)), eps=eps, step_size=step_size)

  # CE of a 2-class linear model is softplus(margin), margin = (w_o - w_y).x + b_o - b_y, which is
  # maximised over the ball by delta = eps * sign(w_d) (L-inf) or eps * w_d / ||w_d|| (L2).
  xf = np.asarray(x, np.float64).reshape(len(y), -1)
  yn = np.asarray(y)
  w_d = w[1 - yn] - w[yn]
  if norm == 'linf':
    delta_star = eps * np.sign(w_d)
  else:
    delta_star = eps * w_d / np.linalg.norm(w_d, axis=1, keepdims=True)
  x_star = xf + delta_star
  assert x_star.min() > 0 and x_star.max() < 1  # clipping inactive
  loss_star = np.logaddexp(0.0, np.sum(w_d * x_star, axis=1) + b[1 - yn] - b[yn])

  loss_pgd = np.asarray(ce(logits_fn(x_adv), y), np.float64)
  np.testing.assert_allclose(loss_pgd, loss_star, atol=1e-4)
  np.testing.assert_allclose(np.asarray(x_adv).reshape(len(y), -1), x_star, atol=1e-3)
  # the clean loss was far from optimal, so the test is not vacuous
  loss_clean = np.asarray(ce(logits_fn(x), y))
  assert np.all(loss_star - loss_clean > 0.05)


# ------------------------------------------------------------------------------------------------
# Feasibility of every iterate.
# ------------------------------------------------------------------------------------------------


def assert_feasible(z, x, eps, norm):
  z = np.asarray(z)
  assert z.min() >= 0.0 and z.max() <= 1.0
  size = np_norm(z, x, norm)
  assert size.max() <= eps * (1 + 1e-5) + 1e-6, size


@pytest.mark.parametrize('norm,eps', [('linf', 8 / 255), ('l2', 0.5)])
def test_every_pgd_iterate_stays_in_ball_and_box(norm, eps):
  x = images_with_extremes(seed=4)
  y = mlp(x).argmax(-1)
  run = jax.jit(lambda x, y, r: attacks.pgd_trajectory(
      mlp, x, y, r, eps=eps, step_size=eps, num_steps=6, norm=norm))
  x_adv, iterates = run(x, y, jax.random.key(1))
  assert iterates.shape == (7,) + x.shape
  np.testing.assert_array_equal(iterates[-1], x_adv)
  for x_t in iterates:
    assert_feasible(x_t, x, eps, norm)
  # the large step pushes the perturbation to the boundary, so projection was active (for L2 the
  # box clip at the saturated pixels shrinks it a little below eps)
  assert np_norm(x_adv, x, norm).max() > (0.99 if norm == 'linf' else 0.9) * eps


@pytest.mark.parametrize('norm,eps', [('linf', 8 / 255), ('l2', 0.5)])
def test_every_apgd_iterate_stays_in_ball_and_box(norm, eps):
  x = images_with_extremes(seed=5)
  y = mlp(x).argmax(-1)
  res = jax.jit(lambda x, y, r: autopgd.apgd_run(
      mlp, x, y, r, eps=eps, num_steps=10, norm=norm, keep_trajectory=True))(
          x, y, jax.random.key(2))
  assert res.trajectory.shape == (10,) + x.shape
  for z in list(res.trajectory) + [res.x_adv, res.x_best]:
    assert_feasible(z, x, eps, norm)


def test_random_starts_and_projections():
  x = jnp.full((16,) + SHAPE, 0.5)
  eps = 0.1

  @jax.jit
  def starts(key):
    return (parts.init(key, x, eps, 'linf', 'uniform'), parts.init(key, x, eps, 'l2', 'uniform'),
            parts.init(key, x, eps, 'l2', 'sphere'), parts.init(key, x, eps, 'linf', 'sphere'),
            parts.init(key, x, eps, 'linf', 'normal', std=1e-3))

  linf, l2, sphere, linf_sphere, normal = starts(jax.random.key(0))
  d = np.asarray(linf) - 0.5
  assert np.abs(d).max() <= eps and np.abs(d).max() > 0.9 * eps and abs(d.mean()) < 0.01
  assert np_norm(l2, x, 'l2').max() <= eps * (1 + 1e-6)
  np.testing.assert_allclose(np_norm(sphere, x, 'l2'), eps, rtol=1e-5)
  np.testing.assert_allclose(np_norm(linf_sphere, x, 'linf'), eps, rtol=1e-5)
  np.testing.assert_allclose(np.std(np.asarray(normal) - 0.5), 1e-3, rtol=0.1)

  x2 = x[:2]
  far = np.asarray(x2) + np.array([0.3, 0.01]).reshape(2, 1, 1, 1)

  @jax.jit
  def projections(far):
    return (parts.project(far, x2, eps, 'l2'), parts.project(far, x2, eps, 'linf'),
            parts.project(x2 + 0.7, x2, eps, 'linf', ball=False))

  p, q, r = (np.asarray(a) for a in projections(jnp.asarray(far)))
  # the first point is rescaled onto the sphere, the second is already inside and unchanged
  np.testing.assert_allclose(np_norm(p, x2, 'l2')[0], eps, rtol=1e-5)
  np.testing.assert_allclose(p[1], far[1], rtol=1e-6)
  np.testing.assert_allclose(q[0], 0.6, rtol=1e-6)
  np.testing.assert_allclose(q[1], 0.51, rtol=1e-6)
  # without the ball only the box clip applies
  np.testing.assert_allclose(r, 1.0)


# ------------------------------------------------------------------------------------------------
# FGSM / I-FGSM / GD semantics.
# ------------------------------------------------------------------------------------------------


def test_fgsm_is_one_signed_step_of_size_eps():
  x = images_with_extremes(seed=6)
  y = mlp(x).argmax(-1)
  eps = 8 / 255
  grad = jax.jit(jax.grad(lambda z: jnp.sum(losses.cross_entropy(mlp(z), y))))(x)
  expected = np.clip(np.asarray(x) + eps * np.sign(np.asarray(grad)), 0.0, 1.0)
  np.testing.assert_allclose(attack('fgsm', mlp, x, y, None, eps=eps), expected, atol=1e-6)
  # an L2 FGSM step is the normalised gradient: of L2 size eps away from the box boundary
  x_mid = images(seed=6, low=0.3, high=0.7)
  x_l2 = attack('fgsm', mlp, x_mid, y, None, static=(('norm', 'l2'),), eps=0.1)
  np.testing.assert_allclose(np_norm(x_l2, x_mid, 'l2'), 0.1, rtol=1e-4)


def test_ifgsm_is_deterministic_and_pgd_is_not():
  x = images(seed=7)
  y = mlp(x).argmax(-1)
  static = (('num_steps', 3),)
  kw = dict(eps=8 / 255, step_size=2 / 255)
  a = attack('ifgsm', mlp, x, y, jax.random.key(0), static=static, **kw)
  b = attack('ifgsm', mlp, x, y, jax.random.key(1), static=static, **kw)
  assert a.shape == x.shape and a.dtype == x.dtype
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(
      a, attack('pgd', mlp, x, y, None, static=static + (('random_start', False),), **kw))
  p0 = attack('pgd', mlp, x, y, jax.random.key(0), static=static, **kw)
  p1 = attack('pgd', mlp, x, y, jax.random.key(1), static=static, **kw)
  assert np.abs(np.asarray(p0) - np.asarray(p1)).max() > 0
  # both keep to the ball
  for z in (a, p0, p1):
    assert_feasible(z, x, 8 / 255, 'linf')


def test_gd_leaves_the_ball_but_not_the_box():
  logits_fn, _, _ = linear_model(seed=2)
  x = images(seed=8, batch=4)
  y = jnp.array([0, 1, 0, 1])
  static = (('num_steps', 5),)
  kw = dict(eps=2 / 255, step_size=2 / 255)
  x_gd = attack('gd', logits_fn, x, y, jax.random.key(0), static=static, **kw)
  x_pgd = attack('pgd', logits_fn, x, y, jax.random.key(0), static=static, **kw)
  assert_feasible(x_pgd, x, 2 / 255, 'linf')
  # on a linear model every step moves every pixel by step_size the same way: up to 6 * eps
  assert np_norm(x_gd, x, 'linf').min() > 4 * 2 / 255
  assert np.asarray(x_gd).min() >= 0.0 and np.asarray(x_gd).max() <= 1.0
  assert np.all(np.asarray(ce(logits_fn(x_gd), y)) > np.asarray(ce(logits_fn(x_pgd), y)))


# ------------------------------------------------------------------------------------------------
# Losses, targeted attacks, restarts.
# ------------------------------------------------------------------------------------------------


def test_loss_values_match_their_definitions():
  logits = jnp.array([[1.0, 4.0, 2.0, 0.5, -1.0], [3.0, 0.0, 2.5, 1.0, 2.0]])
  y = jnp.array([1, 2])
  t = jnp.array([3, 4])

  @jax.jit
  def all_losses(logits, y, t):
    return (losses.margin(logits, y), losses.dlr(logits, y), losses.dlr_targeted(logits, y, t),
            losses.cross_entropy(logits, y), losses.kl_divergence(logits[:1], logits[1:]),
            losses.resolve('ce', targeted=True, target=t)(logits, y),
            losses.resolve('margin', targeted=True, target=t)(logits, y))

  margin, dlr, dlr_t, ce_, kl, ce_targeted, margin_targeted = all_losses(logits, y, t)
  np.testing.assert_allclose(margin, [2.0 - 4.0, 3.0 - 2.5])
  # DLR = -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3)
  np.testing.assert_allclose(dlr, [-(4 - 2) / (4 - 1), -(2.5 - 3) / (3 - 2)], rtol=1e-6)
  # targeted DLR = -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)
  np.testing.assert_allclose(dlr_t, [-(4 - 0.5) / (4 - (1 + 0.5) / 2),
                                     -(2.5 - 2) / (3 - (2 + 1) / 2)], rtol=1e-6)
  z = np.asarray(logits, np.float64)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  np.testing.assert_allclose(ce_, -logp[[0, 1], [1, 2]], rtol=1e-5)
  p, q = np.exp(logp[0]), np.exp(logp[1])
  np.testing.assert_allclose(kl, [np.sum(p * np.log(p / q))], rtol=1e-5)
  # targeted objectives are the negated losses toward the target
  np.testing.assert_allclose(ce_targeted, logp[[0, 1], [3, 4]], rtol=1e-5)
  np.testing.assert_allclose(margin_targeted, [0.5 - 4.0, 2.0 - 3.0])


@pytest.mark.parametrize('loss', ['ce', 'margin'])
def test_targeted_pgd_raises_target_probability(loss):
  x = images(seed=9)
  y = mlp(x).argmax(-1)
  target = (y + 1) % 10
  static = (('num_steps', 5), ('loss', loss))
  kw = dict(eps=8 / 255, step_size=2 / 255)
  x_adv = attack('pgd', mlp, x, y, jax.random.key(0),
                 static=static + (('targeted', True),), target=target, **kw)
  x_unt = attack('pgd', mlp, x, y, jax.random.key(0), static=static, **kw)
  prob = lambda z: np.asarray(jax.nn.softmax(mlp(z)))[np.arange(8), np.asarray(target)]
  assert np.all(prob(x_adv) > prob(x))
  # and moves toward the target much more than an untargeted attack does
  assert prob(x_adv).mean() > prob(x_unt).mean() + 0.1


def test_restarts_never_do_worse_than_one_run():
  x = images(seed=10)
  y = mlp(x).argmax(-1)
  kw = dict(eps=4 / 255, step_size=1 / 255)
  one = attack('pgd', mlp, x, y, jax.random.key(0), static=(('num_steps', 3),), **kw)
  four = attack('pgd', mlp, x, y, jax.random.key(0), static=(('num_steps', 3), ('restarts', 4)),
                **kw)
  def score(z):
    return predict(mlp, z) != np.asarray(y), np.asarray(ce(mlp(z), y))
  s1, l1 = score(one)
  s4, l4 = score(four)
  # lexicographic (success, loss): never worse, and strictly better somewhere
  assert np.all(s4 >= s1)
  same = s4 == s1
  assert np.all(l4[same] >= l1[same] - 1e-6)
  assert np.any((s4 > s1) | (l4 > l1 + 1e-4))
  assert_feasible(four, x, 4 / 255, 'linf')


def test_kl_loss_uses_clean_logits_and_increases_divergence():
  x = images(seed=11)
  y = mlp(x).argmax(-1)
  kw = presets.attack_kwargs('trades')
  static = tuple((k, kw.pop(k)) for k in ('num_steps', 'norm', 'random_start', 'loss'))
  x_default = attack('pgd', mlp, x, y, jax.random.key(0), static=static, **kw)
  # TRADES needs no labels when given the clean logits
  x_given = attack('pgd', mlp, x, None, jax.random.key(0), static=static, clean_logits=mlp(x),
                   **kw)
  np.testing.assert_allclose(x_default, x_given, atol=1e-6)
  kl_fn = jax.jit(losses.kl_divergence)
  kl = np.asarray(kl_fn(mlp(x), mlp(x_default)))
  kl_start = np.asarray(kl_fn(mlp(x), mlp(x + 1e-3)))
  assert np.all(kl > 10 * kl_start) and np.all(kl > 1e-3)
  assert_feasible(x_default, x, 8 / 255, 'linf')


# ------------------------------------------------------------------------------------------------
# APGD.
# ------------------------------------------------------------------------------------------------


def _paper_checkpoints(n):
  """Independent computation: p_j in hundredths (0, 22, 41, ...), w_j = ceil(p_j n / 100)."""
  ps, prev, cur = [], 0, 22
  while cur <= 100:
    ps.append(cur)
    prev, cur = cur, cur + max(cur - prev - 3, 6)
  out = []
  for p in ps:
    w = -(-p * n // 100)
    if not out or w > out[-1]:
      out.append(w)
  return tuple(out)


def test_apgd_checkpoints_match_published_schedule():
  assert attacks.apgd_checkpoints(100) == (22, 41, 57, 70, 80, 87, 93, 99)
  assert autopgd.checkpoint_fractions() == tuple(
      fractions.Fraction(p, 100) for p in (0, 22, 41, 57, 70, 80, 87, 93, 99))
  for n in (1, 5, 10, 20, 37, 50, 100, 250, 1000):
    assert attacks.apgd_checkpoints(n) == _paper_checkpoints(n), n


def test_apgd_step_size_halves_exactly_at_checkpoints():
  # On a 2-class linear model the first step (size 2 eps) reaches the optimal corner and the loss
  # never increases again, so condition 1 holds and the step size halves at *every* checkpoint.
  logits_fn, _, _ = linear_model(seed=3)
  x = images(seed=12, batch=4, low=0.3, high=0.7)
  y = jnp.array([0, 1, 1, 0])
  eps = 0.03
  n = 50
  res = jax.jit(lambda x, y, r: autopgd.apgd_run(logits_fn, x, y, r, eps=eps, num_steps=n))(
      x, y, jax.random.key(0))
  ckpts = attacks.apgd_checkpoints(n)
  expected = np.array([2 * eps * 0.5 ** sum(w <= t for w in ckpts) for t in range(n)])
  np.testing.assert_allclose(res.step_sizes, np.tile(expected[:, None], (1, 4)), rtol=1e-6)
  # the best point is the closed-form L-inf optimum
  grad = jax.jit(jax.grad(lambda z: jnp.sum(losses.cross_entropy(logits_fn(z), y))))(x)
  np.testing.assert_allclose(res.x_best, np.asarray(x) + eps * np.sign(np.asarray(grad)),
                             atol=1e-6)


@pytest.mark.parametrize('norm,eps', [('linf', 8 / 255), ('l2', 0.5)])
def test_apgd_first_iterates_follow_the_momentum_update(norm, eps):
  """x^1 = P(x^0 + eta dir(g^0)); x^{k+1} = P(x^k + 0.75 (z^{k+1} - x^k) + 0.25 (x^k - x^{k-1}))."""
  x = images(seed=22, batch=4, low=0.2, high=0.8)
  y = mlp(x).argmax(-1)
  key = jax.random.key(3)
  res = jax.jit(lambda x, y, r: autopgd.apgd_run(mlp, x, y, r, eps=eps, num_steps=20, norm=norm,
                                                 keep_trajectory=True))(x, y, key)

  @jax.jit
  def reference_iterates(x, y):
    proj = lambda z: parts.project(z, x, eps, norm)
    grad = jax.grad(lambda z: jnp.sum(losses.cross_entropy(mlp(z), y)))
    eta = 2 * eps  # no checkpoint before step 5 of 20
    xs = [proj(parts.init(key, x, eps, norm, 'sphere'))]
    xs.append(proj(parts.step(xs[0], grad(xs[0]), eta, norm)))  # first step: no momentum
    for _ in range(2):
      z = proj(parts.step(xs[-1], grad(xs[-1]), eta, norm))
      xs.append(proj(xs[-1] + 0.75 * (z - xs[-1]) + 0.25 * (xs[-1] - xs[-2])))
    return xs[1:]

  for got, want in zip(res.trajectory[:3], reference_iterates(x, y)):
    np.testing.assert_allclose(got, want, atol=1e-6)
  np.testing.assert_allclose(res.step_sizes[:5], 2 * eps, rtol=1e-6)


def test_apgd_step_size_conditions():
  n_inc = np.array([16.0, 17.0, 12.0, 22.0, 22.0])
  window = np.array([22.0, 22.0, 16.0, 22.0, 22.0])
  reduced_last = np.array([True, True, True, False, True])
  best_last = np.array([1.0, 1.0, 1.0, 2.0, 2.0])
  best_now = np.array([1.0, 1.0, 1.0, 2.0, 2.0])
  halve = autopgd.halve_step_size(n_inc, window, 0.75, reduced_last, best_last, best_now)
  # 16 < 16.5 halves; 17 does not; 12 < 12 is false (the paper's strict inequality); condition 2
  # (not reduced last time, no improvement) halves even when every step increased the loss, but
  # not right after a reduction.
  np.testing.assert_array_equal(halve, [True, False, False, True, False])
  # an improved best loss switches condition 2 off
  assert not autopgd.halve_step_size(np.array([22.0]), np.array([22.0]), 0.75,
                                     np.array([False]), np.array([1.0]), np.array([1.5]))[0]


def test_apgd_reaches_at_least_pgd_loss():
  x = images(seed=13, batch=32)
  y = mlp(x).argmax(-1)
  eps, n = 8 / 255, 20
  res = jax.jit(lambda x, y, r: autopgd.apgd_run(mlp, x, y, r, eps=eps, num_steps=n))(
      x, y, jax.random.key(2))
  apgd_loss = float(np.mean(res.loss_best))
  for step_size in (eps / 4, 2.5 * eps / n, eps / 10):
    x_pgd = attack('pgd', mlp, x, y, jax.random.key(2), static=(('num_steps', n),), eps=eps,
                   step_size=step_size)
    pgd_loss = float(np.mean(ce(mlp(x_pgd), y)))
    assert apgd_loss >= 0.99 * pgd_loss, (step_size, apgd_loss, pgd_loss)
  # the returned best loss is the loss at the returned best point, and the max of all iterates
  np.testing.assert_allclose(res.loss_best, ce(mlp(res.x_best), y), rtol=1e-5)
  assert np.all(np.asarray(res.loss_best)[None] >= np.asarray(res.losses) - 1e-6)


def test_apgd_returns_misclassified_points_and_leaves_wrong_clean_points():
  x = images(seed=14)
  y = mlp(x).argmax(-1)
  y = y.at[0].set((y[0] + 1) % 10)  # example 0 is misclassified before any attack
  x_adv = attack('apgd_ce', mlp, x, y, jax.random.key(0), static=(('num_steps', 10),),
                 eps=16 / 255)
  np.testing.assert_array_equal(x_adv[0], x[0])
  wrong = predict(mlp, x_adv) != np.asarray(y)
  assert wrong.mean() > 0.5
  assert float(attacks.robust_accuracy(mlp, x_adv, y, x_clean=x)) == pytest.approx(1 - wrong.mean())
  assert_feasible(x_adv, x, 16 / 255, 'linf')


def test_apgd_t_targets_and_strength():
  logits = jnp.array([[0.0, 5.0, 3.0, 4.0, 1.0], [9.0, 1.0, 2.0, 3.0, 4.0]])
  y = jnp.array([1, 2])  # example 1 is misclassified: its targets skip the true class only
  np.testing.assert_array_equal(autopgd.target_classes(logits, y, 3), [[3, 2, 4], [0, 4, 3]])
  with pytest.raises(ValueError, match='num_target_classes'):
    autopgd.target_classes(logits, y, 5)
  x = images(seed=15)
  y = mlp(x).argmax(-1)
  x_adv = attack('apgd_t', mlp, x, y, jax.random.key(0),
                 static=(('num_steps', 5), ('num_target_classes', 3)), eps=8 / 255)
  assert_feasible(x_adv, x, 8 / 255, 'linf')
  assert np.mean(predict(mlp, x_adv) == np.asarray(y)) < 0.5


# ------------------------------------------------------------------------------------------------
# Compilation and structure.
# ------------------------------------------------------------------------------------------------


def test_pgd_compiles_once_for_repeated_calls():
  @jax.jit
  @chex.assert_max_traces(n=1)
  def run(params, x, y, rng, eps):
    return attacks.pgd(lambda z: mlp_apply(params, z), x, y, rng, eps=eps, step_size=eps / 4,
                       num_steps=3, restarts=2)

  for i in range(3):
    params = mlp_params(seed=i)
    x = images(seed=20 + i)
    y = jnp.asarray(predict(lambda z: mlp_apply(params, z), x))
    eps = (2.0 + i) / 255  # a traced eps: an eps sweep reuses the compiled program
    assert_feasible(run(params, x, y, jax.random.key(i), eps), x, eps, 'linf')


@pytest.mark.parametrize('name', ['pgd', 'apgd_ce', 'apgd_t'])
def test_iterations_are_a_scan_not_a_python_loop(name):
  """The number of times logits_fn is traced does not depend on the number of steps."""
  def count_traces(num_steps):
    calls = []

    def logits_fn(z):
      calls.append(1)
      return mlp_apply(MLP_PARAMS, z)

    kw = dict(eps=0.03, num_steps=num_steps)
    if name == 'pgd':
      kw.update(step_size=0.01, restarts=3)
    x = images(seed=16, batch=2)
    jax.make_jaxpr(lambda x, y, r: attacks.get(name)(logits_fn, x, y, r, **kw))(
        x, jnp.array([0, 1]), jax.random.key(0))
    return len(calls)

  assert count_traces(2) == count_traces(9)


def test_attack_output_has_no_gradient():
  x = images(seed=17, batch=2)
  y = jnp.array([0, 1])

  @jax.jit
  @jax.grad
  def grad_of_attack_output(params):
    x_adv = attacks.pgd(lambda z: mlp_apply(params, z), x, y, jax.random.key(0), eps=0.03,
                        step_size=0.01, num_steps=2)
    return jnp.sum(x_adv)

  grads = grad_of_attack_output(MLP_PARAMS)
  assert all(np.abs(np.asarray(g)).max() == 0.0 for g in jax.tree_util.tree_leaves(grads))


# ------------------------------------------------------------------------------------------------
# Registry, presets and argument validation.
# ------------------------------------------------------------------------------------------------


def test_get_returns_attacks_and_rejects_unknown_names():
  assert attacks.get('pgd') is attacks.pgd
  assert attacks.get('apgd_t') is attacks.apgd_t
  for name in ('pgd', 'fgsm', 'ifgsm', 'gd', 'apgd_ce', 'apgd_t'):
    assert callable(attacks.get(name))
  with pytest.raises(ValueError, match="'autoattack'.*'pgd'.*'apgd_t'"):
    attacks.get('autoattack')


def test_presets_follow_the_papers():
  # AdvProp: PGD-n, eps in {1..4}/255, n = eps + 1 (n = 1 for eps = 1), step 1/255.
  for name, eps, n in (('advprop_pgd1', 1, 1), ('advprop_pgd3', 2, 3), ('advprop_pgd4', 3, 4),
                       ('advprop_pgd5', 4, 5)):
    p = presets.get(name)
    assert p['attack'] == 'pgd' and p['random_start'] is True and p['norm'] == 'linf'
    assert p['eps'] == pytest.approx(eps / 255) and p['num_steps'] == n
    assert p['step_size'] == pytest.approx(1 / 255)
  # Table 7: I-FGSM and GD with the PGD5 (eps=4) hyper-parameters
  for name, attack_name in (('advprop_ifgsm5', 'ifgsm'), ('advprop_gd5', 'gd')):
    p = presets.get(name)
    assert p['attack'] == attack_name
    assert (p['eps'], p['step_size'], p['num_steps']) == (4 / 255, 1 / 255, 5)
  madry = presets.get('madry_pgd10')
  assert (madry['eps'], madry['step_size'], madry['num_steps']) == (8 / 255, 2 / 255, 10)
  assert madry['random_start'] is True
  trades = presets.get('trades')
  assert (trades['eps'], trades['step_size'], trades['num_steps']) == (8 / 255, 2 / 255, 10)
  assert trades['loss'] == 'kl' and trades['random_start'] == 'normal'
  assert trades['init_std'] == 0.001
  # fresh copies: mutating one does not change the registry
  presets.get('madry_pgd10')['eps'] = 1.0
  assert presets.get('madry_pgd10')['eps'] == 8 / 255
  with pytest.raises(ValueError, match='valid names'):
    presets.get('pgd_huge')
  # every preset names a registered attack
  for name in presets.NAMES:
    fn = presets.build(name)
    assert fn.func is attacks.get(presets.get(name)['attack'])
    assert 'attack' not in presets.attack_kwargs(name)
  assert presets.build('madry_pgd10', num_steps=20).keywords['num_steps'] == 20


@pytest.mark.parametrize('kwargs,match', [
    (dict(eps=-0.1), 'eps'),
    (dict(num_steps=0), 'num_steps'),
    (dict(num_steps=2.5), 'num_steps'),
    (dict(step_size=-1.0), 'step_size'),
    (dict(norm='l1'), "'l1'.*'linf', 'l2'"),
    (dict(loss='hinge'), "'hinge'.*'ce'"),
    (dict(random_start='gaussian'), 'gaussian'),
    (dict(restarts=0), 'restarts'),
    (dict(targeted=True), 'target'),
    (dict(loss='kl', targeted=True, target=1), 'kl'),
    (dict(target=3), 'targeted=False'),
    (dict(targeted=True, target=jnp.array([1, 2, 3])), 'shape'),
])
def test_pgd_rejects_bad_arguments(kwargs, match):
  x = images(seed=19, batch=2)
  kw = dict(eps=0.03, step_size=0.01, num_steps=2)
  kw.update(kwargs)
  with pytest.raises(ValueError, match=match):
    attacks.pgd(mlp, x, jnp.array([0, 1]), jax.random.key(0), **kw)


@pytest.mark.parametrize('fn,kwargs,match', [
    (attacks.apgd, dict(eps=-1.0), 'eps'),
    (attacks.apgd, dict(eps=0.03, num_steps=0), 'num_steps'),
    (attacks.apgd, dict(eps=0.03, norm='l0'), "'l0'"),
    (attacks.apgd, dict(eps=0.03, loss='cw'), "'cw'.*'dlr_targeted'"),
    (attacks.apgd, dict(eps=0.03, loss='dlr_targeted'), 'target_class'),
    (attacks.apgd, dict(eps=0.03, rho=1.5), 'rho'),
    (attacks.apgd_t, dict(eps=0.03, num_target_classes=10), 'num_target_classes'),
    (attacks.fgsm, dict(eps=-0.5), 'eps'),
])
def test_apgd_rejects_bad_arguments(fn, kwargs, match):
  x = images(seed=19, batch=2)
  with pytest.raises(ValueError, match=match):
    fn(mlp, x, jnp.array([0, 1]), jax.random.key(0), **kwargs)


@pytest.mark.parametrize('attack', [attacks.pgd, attacks.apgd_ce, attacks.apgd_t])
@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float16, jnp.uint8])
def test_attacks_refuse_images_narrower_than_float32(attack, dtype):
  # In bfloat16, x + 8/255 rounded to 0.0322 > eps: the projection could not keep its promise.
  x = images(seed=19, batch=2).astype(dtype)
  kwargs = dict(step_size=0.01) if attack is attacks.pgd else {}
  with pytest.raises(ValueError, match=f'float32 images.*got {jnp.dtype(dtype).name}'):
    attack(mlp, x, jnp.array([0, 1]), jax.random.key(0), eps=8 / 255, num_steps=2, **kwargs)


def test_random_start_needs_a_key():
  x = images(seed=19, batch=2)
  with pytest.raises(ValueError, match='rng'):
    attacks.pgd(mlp, x, jnp.array([0, 1]), None, eps=0.03, step_size=0.01, num_steps=1)


def test_robust_accuracy_counts_clean_errors():
  # class 0 iff the first pixel exceeds 0.5
  logits_fn = lambda z: jnp.stack([z[:, 0, 0, 0], 1.0 - z[:, 0, 0, 0]], axis=-1)
  def batch(first_pixels):
    x = np.zeros((4,) + SHAPE, np.float32)
    x[:, 0, 0, 0] = first_pixels
    return jnp.asarray(x)
  x = batch([0.9, 0.9, 0.1, 0.1])  # predictions 0, 0, 1, 1
  x_adv = batch([0.1, 0.1, 0.1, 0.9])  # predictions 1, 1, 1, 0
  y = jnp.array([1, 0, 1, 1])
  np.testing.assert_array_equal(attacks.correct(logits_fn, x, y), [False, True, True, True])
  assert float(attacks.robust_accuracy(logits_fn, x_adv, y)) == 0.5
  # example 0 is right after the "attack" but wrong on the clean image: not robust
  assert float(attacks.robust_accuracy(logits_fn, x_adv, y, x_clean=x)) == 0.25
  np.testing.assert_array_equal(
      attacks.worst_case_correct(jnp.array([True, True, False]), jnp.array([True, False, True])),
      [True, False, False])
