r"""Where a trained Auxiliary Training run is robust: its primary path or its auxiliary heads.

Auxiliary Training (``jaxrobust.methods.auxtrain``) trains one auxiliary classifier per training
corruption on the shared backbone and keeps only the primary classifier for inference, so any
robustness it gains must reach the backbone and the primary FC. This analysis scores, on the
same corrupted test images, the primary classifier and the auxiliary head of that corruption
(head j reads the backbone's last feature map, as in training), each with the backbone
normalising by

* its clean running statistics (what inference uses), and
* the corrupted test batch's own statistics (what every group sees in training under selective
  BatchNorm).

The heads always normalise with their batch's statistics (they keep no running averages). A head
far more accurate than the primary path means the corruption-specific knowledge stayed in the
head; a primary path that gains only under batch statistics means the backbone's features are
robust but its clean running statistics do not fit the corrupted images.

    python -m jaxrobust.evaluation.auxtrain_heads --workdir=results/cpu_budget/runs/auxtrain \
        --severities=3 --max_examples=1000
"""

from __future__ import annotations

import json
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from jaxrobust import files
from jaxrobust.evaluation import runner
from jaxrobust.models import apply_model


def primary_and_head_accuracy(run: runner.Run, severities: Optional[Sequence[int]] = None,
                              max_examples: Optional[int] = 1000, seed: int = 0) -> dict:
  """Accuracy of the primary classifier and of each auxiliary head on its own corruption.

  Args:
    run: an Auxiliary Training run from ``runner.load_run(workdir, with_method=True)``.
    severities: severities to score (default: each head's training severity).
    max_examples: test images (None = the whole split); every corruption sees the same ones.
      Batch statistics are those of each eval batch, so under them a batch with padding is
      skipped, with a warning (ValueError if every batch has some): pick a multiple of the eval
      batch size as run, i.e. rounded up to a multiple of the devices (the 10,000 CIFAR-10 test
      images are 20 batches of 500 on 1, 2 or 4 devices).
    seed: corruption noise seed (``fold_in`` with the batch index).

  Returns:
    ``{corruption: {severity: {'primary_running', 'head_running', 'primary_batch',
    'head_batch'}}}``: top-1 accuracies (fractions); ``running``/``batch`` say which statistics
    the backbone normalised with.
  """
  if run.config.method != 'auxtrain':
    raise ValueError(f'{run.workdir!r} is a {run.config.method!r} run; this analysis needs an '
                     "'auxtrain' run (its auxiliary heads).")
  if getattr(run, 'method', None) is None or 'heads' not in (run.extras or {}):
    raise ValueError('Load the run with runner.load_run(workdir, with_method=True): the heads '
                     'live in the checkpoint\'s extras.')
  method = run.method
  heads = jax.tree.map(jnp.asarray, run.extras['heads'])
  # Plain jit over global arrays (no shard_map): batch statistics are over the whole batch,
  # so no BatchNorm may name a mapped axis.
  model = run.model.clone(bn_axis_name=None)
  head = method.head(run.params['classifier']['kernel'].shape[1]).clone(axis_name=None)

  def counts(x, y, mask, j, batch_stats_mode):
    out, _ = apply_model(model, run.params, run.batch_stats, x, train=batch_stats_mode,
                         update_stats=False, return_features=True, dropout=False)
    aux = head.apply({'params': jax.tree.map(lambda p: p[j], heads)}, out['features'])
    hit = lambda logits: jnp.sum((jnp.argmax(logits, -1) == y) * mask)
    return hit(out['logits']), hit(aux), jnp.sum(mask)

  counts = jax.jit(counts, static_argnums=(3, 4))
  cases = [(j, name, int(sev), runner.jitted_corruption(name, int(sev)))
           for j, name in enumerate(method.corruption_names)
           for sev in severities or (method.severities[j],)]
  modes = ((False, 'running'), (True, 'batch'))
  # One pass over the split, as runner.corruption_suite: each batch is scored under every case
  # while it is on device, and the counts are summed there and fetched once.
  totals = {(name, sev, tag): 0 for _, name, sev, _ in cases for _, tag in modes}
  full_batches, skipped, batch_size = 0, 0, 0
  for i, b in enumerate(run.batches(max_examples)):
    rng = jax.random.fold_in(jax.random.PRNGKey(seed), i)
    # batch statistics must not see padding; decided on device (a global array: every process
    # gets the same answer)
    real = int(_real_examples(b['mask']))
    batch_size = b['mask'].shape[0]
    full = real == batch_size
    full_batches += full
    skipped += 0 if full else real
    for j, name, sev, corrupt in cases:
      x = corrupt(b['image'], rng=rng)
      for mode, tag in modes:
        if mode and not full:
          continue
        totals[name, sev, tag] += jnp.stack(counts(x, b['label'], b['mask'], j, mode))
  if not full_batches:
    raise ValueError(f'Every eval batch has padding (max_examples={max_examples}, batches of '
                     f'{batch_size} on {run.mesh.devices.size} devices), so none can be scored '
                     f'under batch statistics; pick max_examples a multiple of the batch size.')
  if skipped:
    logging.warning('The batch-statistics columns leave out the %d images of the padded last '
                    'batch (batches of %d); the running-statistics ones count them.', skipped,
                    batch_size)
  out = {}
  for _, name, sev, _ in cases:
    res = {}
    for _, tag in modes:
      primary, head_hits, n = np.asarray(totals[name, sev, tag], np.float64)
      res[f'primary_{tag}'], res[f'head_{tag}'] = primary / n, head_hits / n
    out.setdefault(name, {})[sev] = res
    logging.info('%s s%d: %s', name, sev, ' '.join(f'{k} {100 * v:.1f}' for k, v in res.items()))
  return out


_real_examples = jax.jit(lambda mask: jnp.sum(mask > 0))


FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'An Auxiliary Training run.')
flags.DEFINE_list('severities', None, 'Severities (default: each head\'s training severity).')
flags.DEFINE_integer('max_examples', 1000, 'Test images (0 = all).')
flags.DEFINE_string('out', None, 'JSON to write (default <workdir>/auxtrain_heads.json).')


def main(argv):
  del argv
  sevs = runner.check_severities(FLAGS.severities) if FLAGS.severities else None
  run = runner.load_run(FLAGS.workdir, with_method=True)
  res = primary_and_head_accuracy(run, sevs, FLAGS.max_examples or None)
  path = files.as_path(FLAGS.out or files.as_path(FLAGS.workdir) / 'auxtrain_heads.json')
  path.write_text(json.dumps({'step': run.step, 'max_examples': FLAGS.max_examples,
                              'accuracy': res}, indent=1))
  # "running"/"batch": the statistics the BACKBONE normalises with (the heads' own BN always
  # uses the batch's, as in training)
  print('| corruption | severity | primary, backbone running stats | head, backbone running '
        'stats | primary, backbone batch stats | head, backbone batch stats |\n'
        '|---|---|---|---|---|---|')
  for name, per in res.items():
    for sev, r in per.items():
      print(f'| {name} | {sev} | {100 * r["primary_running"]:.1f} | '
            f'{100 * r["head_running"]:.1f} | {100 * r["primary_batch"]:.1f} | '
            f'{100 * r["head_batch"]:.1f} |')


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdir'])
  app.run(main)
