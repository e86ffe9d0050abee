"""Clean classification metrics (top-1, top-5, loss) on every device."""

from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from jaxrobust import parallel
from jaxrobust.models import MAIN, apply_model


def make_eval_step(model, mesh, domains: Sequence[str] = (MAIN,)):
  """``f(params, batch_stats, batch) -> {domain: sums}`` of correct top-1/top-5, loss and count
  (psum-ed).

  The model runs in eval mode with each domain's running statistics; nothing is updated. Every
  domain is scored on the same transferred batch (a method evaluated with its main and
  auxiliary BatchNorm reads the eval split once).
  """
  def sums_of(params, batch_stats, batch, domain):
    logits, _ = apply_model(model, params, batch_stats, batch['image'], train=False, domain=domain)
    mask = batch['mask']
    labels = batch['label']
    k = min(5, logits.shape[-1])
    topk = jax.lax.top_k(logits, k)[1]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    return {'top1': jnp.sum((topk[:, 0] == labels) * mask),
            'top5': jnp.sum(jnp.any(topk == labels[:, None], axis=-1) * mask),
            'loss': jnp.sum(loss * mask), 'count': jnp.sum(mask)}

  def body(params, batch_stats, batch):
    return jax.lax.psum({d: sums_of(params, batch_stats, batch, d) for d in domains},
                        parallel.AXIS)
  return parallel.spmd(body, mesh, in_specs=(P(), P(), P(parallel.AXIS)), out_specs=P())


def evaluate(eval_step, params, batch_stats, batches: Iterable[dict], mesh) -> dict:
  """Runs ``eval_step`` over host batches; ``{domain: {top1, top5, loss, count}}``."""
  totals = None
  for batch in batches:
    sums = eval_step(params, batch_stats, parallel.shard_batch(batch, mesh))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  out = {}
  for domain, t in parallel.to_host(totals).items():
    t = {k: float(v) for k, v in t.items()}
    n = max(t['count'], 1.0)
    out[domain] = {'top1': t['top1'] / n, 'top5': t['top5'] / n, 'loss': t['loss'] / n,
                   'count': int(t['count'])}
  return out


def accuracy_np(logits: np.ndarray, labels: np.ndarray) -> float:
  return float(np.mean(np.argmax(logits, -1) == labels))
