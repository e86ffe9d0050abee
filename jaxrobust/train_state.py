"""The train state: everything a run needs to continue, as one pytree."""

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
  """Explicit training state (no hidden globals).

  Attributes:
    step: number of optimizer updates done so far (int32 scalar).
    params: model parameters.
    opt_state: optax state of ``params``' optimizer.
    batch_stats: BatchNorm running statistics keyed by domain (``{'main': tree, ...}``).
    rng: base PRNG key of the run. Step ``s`` on device ``d`` draws from
      ``fold_in(fold_in(rng, s), d)`` (``train.step_key``); draws every device must share
      (EWS's subnets, MixProp's mixing weights) come from ``methods.common.stream_key``.
    extras: method-owned state (auxiliary heads, noise generators, controllers, buffers), a
      pytree of arrays or ``{}``.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  batch_stats: dict
  rng: jax.Array
  extras: Any = flax.struct.field(default_factory=dict)
