"""LSTM controller that samples subnets, and its policy-gradient loss (EWS, Guo et al. 2022).

EWS (paper ``001``, section 3.2 and supplementary A) searches for *weak* subnets with a policy
``pi_theta`` that makes one decision per *slot*: a residual block's path choice (residual branch
/ shortcut) or a layer's channel choice. Slot ``k`` has ``C_k`` candidates of which ``m_k`` are
kept (``m_k = round(rho * C_k)`` or similar, decided by the caller).

Per slot the controller

1. advances an LSTM (hidden size 100: the paper states 100-d embeddings only; ENAS, which it
   follows, uses 100 for both) by one step; its input is the average embedding of the
   candidates chosen at the previous slot (a constant zero vector and zero state before the
   first slot: the paper's "initial hidden state kept constant during training");
2. maps the LSTM output to logits with one fully connected layer shared by all slots whose
   width is the largest ``C_k``; slot ``k`` uses only the first ``C_k`` logits;
3. samples ``m_k`` candidates *without replacement* from the softmax, by Gumbel top-k: the
   indices of the ``m_k`` largest ``l_i + G_i`` (``G_i`` i.i.d. standard Gumbel), in decreasing
   order, are distributed exactly as ``m_k`` sequential softmax draws without replacement;
4. embeds each candidate with its own learnable 100-d vector (one per candidate per slot).

**Which probability the policy gradient uses.** :meth:`SubnetController.log_prob` is the exact
log-probability of the *ordered* draw sequence under sequential sampling without replacement
(Plackett-Luce):

  ``log p(i_1, ..., i_m) = sum_j [ l_{i_j} - logsumexp_{c not in {i_1..i_{j-1}}} l_c ]``

summed over slots. The subnet depends only on the unordered set, but the LSTM's next input (the
average embedding) does too, so the ordered sequence is a finer-grained action whose reward is a
function of the set: ``grad E[R] = E[R grad log p(ordered)]`` is an unbiased REINFORCE estimator.
The set's probability (a sum over ``m_k!`` orderings) would have lower variance but is
intractable for channel slots (e.g. 32 of 64 channels), so we do not use it.

**Entropy.** The entropy of the whole sequence has no closed form; ``entropy`` is the sum, along
the sampled trajectory, of the entropies of each draw's conditional distribution
``H(X_j | X_<j = x_<j)``. By the chain rule its expectation over trajectories is exactly the
entropy of the ordered sequence, so it is an unbiased estimate (the usual ENAS-style bonus).

All shapes are static: one compiled function samples any subnet and ``jax.vmap`` over keys
samples several (EWS samples C=8 per controller step).
"""

from typing import Sequence, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Finite stand-in for -inf on masked logits: exp() underflows to 0 while products with zero
# probabilities and their gradients stay finite (a true -inf would give 0 * inf = nan).
_NEG = -1e9

Slot = Tuple[int, int]


@flax.struct.dataclass
class ControllerSample:
  """One sampled subnet.

  Attributes:
    masks: per slot a float32 0/1 array of shape [C_k] with exactly ``m_k`` ones.
    indices: per slot an int32 array [m_k]: the chosen candidates in draw order.
    log_prob: log-probability of the ordered draws (scalar; see module docstring).
    entropy: sum of the per-draw conditional entropies along this sample (scalar).
  """
  masks: Tuple[jax.Array, ...]
  indices: Tuple[jax.Array, ...]
  log_prob: jax.Array
  entropy: jax.Array


def _uniform_init(scale: float):
  """U(-scale, scale), the ENAS controller initialisation."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)
  return init


def validate_slots(slots) -> Tuple[Slot, ...]:
  """Checks ``slots`` = sequence of ``(num_candidates, num_chosen)`` with 1 <= m <= C."""
  try:
    slots = tuple((int(c), int(m)) for c, m in slots)
  except (TypeError, ValueError) as e:
    raise ValueError(f'slots must be a sequence of (num_candidates, num_chosen) pairs, got '
                     f'{slots!r}.') from e
  if not slots:
    raise ValueError('slots is empty: the controller needs at least one decision.')
  for k, (c, m) in enumerate(slots):
    if c < 1 or not 1 <= m <= c:
      raise ValueError(f'slot {k} = (C={c}, m={m}): need C >= 1 and 1 <= m <= C.')
  return slots


def _safe_log(x):
  """log(x) for x > 0 and a finite large negative number (with zero gradient) for x <= 0."""
  pos = x > 1e-30
  return jnp.where(pos, jnp.log(jnp.where(pos, x, 1.0)), _NEG)


def _draw_stats(logits, valid, idx, draw_valid):
  """Plackett-Luce log-probability and per-draw entropies of ordered draws, in O(C + m) memory.

  Before draw ``j`` the candidates still available are ``rem_j = U + {i_j, ..., i_m}`` with
  ``U`` the valid candidates never drawn. Hence

    ``lse_j = logsumexp_{rem_j} l = logaddexp(logsumexp_U l, revcumlogsumexp(l_i)_j)``,

  sums of positive terms only (no cancellation, unlike ``log(total - prefix)``), and
  ``log p = sum_j [l_{i_j} - lse_j]``. The entropy of draw ``j``'s distribution
  ``q_j = softmax over rem_j`` is ``H_j = lse_j - E_{q_j}[l]``; shifting logits by their maximum
  ``M`` plus one (``l' = l - M - 1 <= -1``; ``H_j`` is shift-invariant) makes ``E_{q_j}[-l']`` a
  ratio of positive sums, computed in log space the same way, whose log stays differentiable.

  Args:
    logits: [C_max], invalid entries already set to ``_NEG``.
    valid: [C_max] bool, the slot's first ``C_k`` candidates.
    idx: [m_max] int, drawn candidates in order (0 where not ``draw_valid``).
    draw_valid: [m_max] bool, the slot's first ``m_k`` draws.

  Returns:
    ``(log_prob, entropy, chosen)``: scalars, and the float 0/1 mask [C_max] of drawn candidates.
  """
  chosen = jnp.zeros(logits.shape, bool).at[idx].max(draw_valid)
  unchosen = valid & ~chosen
  # One below the maximum, not at it: at l' = 0 the log(-l') below would be clipped, losing that
  # logit's part of the entropy's gradient (its value is unaffected, being shift-invariant).
  shift = jax.lax.stop_gradient(jnp.max(logits)) + 1.0
  lp = logits - shift                                                   # <= -1 where valid
  drawn = jnp.where(draw_valid, lp[idx], _NEG)                          # [m_max]
  lse = jnp.logaddexp(jax.nn.logsumexp(jnp.where(unchosen, lp, _NEG)),
                      jax.lax.cumlogsumexp(drawn, reverse=True))
  log_prob = jnp.sum(jnp.where(draw_valid, drawn - lse, 0.0))
  # log sum_{rem_j} exp(l'_c) * (-l'_c), then H_j = lse_j + exp(that - lse_j).
  log_neg = _safe_log(-lp)
  log_b = jnp.logaddexp(jax.nn.logsumexp(jnp.where(unchosen, lp + log_neg, _NEG)),
                        jax.lax.cumlogsumexp(jnp.where(draw_valid, drawn + log_neg[idx], _NEG),
                                             reverse=True))
  ent_draw = lse + jnp.exp(jnp.minimum(log_b - lse, 80.0))
  entropy = jnp.sum(jnp.where(draw_valid, ent_draw, 0.0))
  return log_prob, entropy, chosen.astype(jnp.float32)


class SubnetController(nn.Module):
  """LSTM policy over subnets (EWS supplementary A).

  Use :meth:`sample` (also ``__call__``) with an rng to draw a subnet and :meth:`log_prob` to
  re-evaluate given draws differentiably, e.g.
  ``controller.apply({'params': p}, idx, method=SubnetController.log_prob)``.

  Attributes:
    slots: static tuple of ``(C_k, m_k)``: candidates and number to choose per decision.
    hidden_size: LSTM hidden size (100, as ENAS; the paper does not state it).
    embed_dim: candidate embedding size (100 in the paper).
    init_scale: parameters are initialised U(-init_scale, init_scale) (ENAS's 0.1), which keeps
      the initial policy close to uniform.
  """
  slots: Tuple[Slot, ...]
  hidden_size: int = 100
  embed_dim: int = 100
  init_scale: float = 0.1

  def __post_init__(self):
    object.__setattr__(self, 'slots', validate_slots(self.slots))
    super().__post_init__()

  @property
  def max_candidates(self) -> int:
    return max(c for c, _ in self.slots)

  @property
  def max_chosen(self) -> int:
    return max(m for _, m in self.slots)

  def setup(self):
    init = _uniform_init(self.init_scale)
    h, e = self.hidden_size, self.embed_dim
    total = sum(c for c, _ in self.slots)
    self.embeddings = self.param('embeddings', init, (total, e))
    # LSTM gates in the order (input, forget, cell, output).
    self.lstm_wi = self.param('lstm_wi', init, (e, 4 * h))
    self.lstm_wh = self.param('lstm_wh', init, (h, 4 * h))
    self.lstm_b = self.param('lstm_b', init, (4 * h,))
    self.head_kernel = self.param('head_kernel', init, (h, self.max_candidates))
    self.head_bias = self.param('head_bias', init, (self.max_candidates,))

  def _static_arrays(self):
    c = np.array([c for c, _ in self.slots], np.int32)
    m = np.array([m for _, m in self.slots], np.int32)
    offsets = np.concatenate([[0], np.cumsum(c)[:-1]]).astype(np.int32)
    return jnp.asarray(c), jnp.asarray(m), jnp.asarray(offsets)

  def _rollout(self, gumbel=None, forced=None):
    """Runs the LSTM over all slots with ``lax.scan``.

    Exactly one of ``gumbel`` ([K, C_max] noise: sample) or ``forced`` ([K, m_max] indices:
    evaluate given draws) is given. Returns per-slot padded indices [K, m_max], masks
    [K, C_max], log-probs [K] and entropies [K].
    """
    c_max, m_max = self.max_candidates, self.max_chosen
    num_c, num_m, offsets = self._static_arrays()
    params = (self.embeddings, self.lstm_wi, self.lstm_wh, self.lstm_b, self.head_kernel,
              self.head_bias)
    sampling = gumbel is not None
    per_step = gumbel if sampling else forced

    def step(carry, xs):
      emb, wi, wh, b, hk, hb = params
      h, c, inp = carry
      c_k, m_k, off, extra = xs
      gates = inp @ wi + h @ wh + b
      gi, gf, gg, go = jnp.split(gates, 4)
      c = jax.nn.sigmoid(gf) * c + jax.nn.sigmoid(gi) * jnp.tanh(gg)
      h = jax.nn.sigmoid(go) * jnp.tanh(c)
      valid = jnp.arange(c_max) < c_k
      logits = jnp.where(valid, h @ hk + hb, _NEG)
      if sampling:
        _, idx = jax.lax.top_k(logits + extra, m_max)
      else:
        idx = extra.astype(jnp.int32)
      draw_valid = jnp.arange(m_max) < m_k
      idx = jnp.where(draw_valid, idx, 0)
      logp, ent, chosen = _draw_stats(logits, valid, idx, draw_valid)
      # Next input: the average embedding of the chosen candidates (supplementary A).
      rows = emb[off + idx]
      inp = jnp.sum(rows * draw_valid[:, None], axis=0) / m_k
      return (h, c, inp), (jnp.where(draw_valid, idx, -1), chosen, logp, ent)

    zeros_h = jnp.zeros((self.hidden_size,), jnp.float32)
    carry = (zeros_h, zeros_h, jnp.zeros((self.embed_dim,), jnp.float32))
    _, outs = jax.lax.scan(step, carry, (num_c, num_m, offsets, per_step))
    return outs

  def sample(self, rng: jax.Array) -> ControllerSample:
    """Samples one subnet.

    Args:
      rng: PRNG key for the Gumbel noise.

    Returns:
      A :class:`ControllerSample` (masks, ordered indices, log-prob, entropy estimate).
    """
    k = len(self.slots)
    gumbel = jax.random.gumbel(rng, (k, self.max_candidates), jnp.float32)
    idx, masks, logps, ents = self._rollout(gumbel=gumbel)
    return ControllerSample(
        masks=tuple(masks[i, :c] for i, (c, _) in enumerate(self.slots)),
        indices=tuple(idx[i, :m] for i, (_, m) in enumerate(self.slots)),
        log_prob=jnp.sum(logps), entropy=jnp.sum(ents))

  def __call__(self, rng: jax.Array) -> ControllerSample:
    return self.sample(rng)

  def log_prob(self, indices: Sequence[jax.Array]) -> Tuple[jax.Array, jax.Array]:
    """Log-probability and entropy estimate of given ordered draws (differentiable).

    Args:
      indices: per slot an int array [m_k] of distinct candidates in ``[0, C_k)``, in draw
        order (``ControllerSample.indices``). Validity is not checked (it cannot be under jit).

    Returns:
      ``(log_prob, entropy)``, scalars, as in :meth:`sample`.
    """
    if len(indices) != len(self.slots):
      raise ValueError(f'Got indices for {len(indices)} slots; this controller has '
                       f'{len(self.slots)}.')
    padded = []
    for k, (ix, (_, m)) in enumerate(zip(indices, self.slots)):
      ix = jnp.asarray(ix, jnp.int32)
      if ix.shape != (m,):
        raise ValueError(f'indices[{k}] has shape {ix.shape}; slot {k} chooses m={m}: ({m},).')
      padded.append(jnp.pad(ix, (0, self.max_chosen - m)))
    _, _, logps, ents = self._rollout(forced=jnp.stack(padded))
    return jnp.sum(logps), jnp.sum(ents)


def init_controller(controller: SubnetController, rng: jax.Array):
  """Initial controller parameters (the ``'params'`` collection)."""
  return controller.init(rng, jax.random.key(0))['params']


def sample_subnets(controller: SubnetController, params, rng: jax.Array,
                   num_samples: int) -> ControllerSample:
  """``num_samples`` independent subnets; every field gets a leading [num_samples] axis."""
  keys = jax.random.split(rng, num_samples)
  return jax.vmap(lambda r: controller.apply({'params': params}, r,
                                             method=SubnetController.sample))(keys)


def log_prob(controller: SubnetController, params, indices) -> Tuple[jax.Array, jax.Array]:
  """Functional form of :meth:`SubnetController.log_prob` (one sample; vmap for several)."""
  return controller.apply({'params': params}, indices, method=SubnetController.log_prob)


def reinforce_loss(log_probs: jax.Array, rewards: jax.Array, baseline, entropy: jax.Array,
                   entropy_weight) -> jax.Array:
  """REINFORCE loss with a baseline and an entropy bonus, to be *minimised*.

  ``L = -mean_i[(R_i - b) log pi(alpha_i)] - w * mean_i[H_i]``; its gradient is the negative of
  Algorithm 1's ascent direction ``1/C sum_i grad log pi(alpha_i) (R_i - b)`` plus the bonus.
  For EWS the reward is minus the subnet's accuracy, so minimising ``L`` finds weak subnets.

  Args:
    log_probs: [C] log-probabilities of the sampled subnets (differentiable).
    rewards: [C] rewards (treated as constants).
    baseline: scalar baseline ``b`` (treated as a constant), e.g. from :func:`update_baseline`.
    entropy: [C] entropy estimates (differentiable).
    entropy_weight: ``w >= 0``.

  Returns:
    Scalar loss.
  """
  if isinstance(entropy_weight, (int, float)) and entropy_weight < 0:
    raise ValueError(f'entropy_weight={entropy_weight!r} must be >= 0.')
  advantage = jax.lax.stop_gradient(jnp.asarray(rewards) - baseline)
  return -jnp.mean(advantage * log_probs) - entropy_weight * jnp.mean(entropy)


def update_baseline(baseline, rewards: jax.Array, decay) -> jax.Array:
  """Exponential moving average baseline: ``b <- decay * b + (1 - decay) * mean(rewards)``."""
  if isinstance(decay, (int, float)) and not 0.0 <= decay <= 1.0:
    raise ValueError(f'decay={decay!r} must be in [0, 1].')
  return decay * baseline + (1.0 - decay) * jnp.mean(jax.lax.stop_gradient(rewards))
