"""Train-step throughput per model, batch size and method on the current backend.

    python benchmarks/throughput.py                                  # CPU-sized defaults
    python benchmarks/throughput.py --models=resnet18,wrn28_10 --batch_sizes=128,256 \
        --methods=vanilla,advprop,mixprop --image_size=32 --steps=20   # on an accelerator

Compile time is measured separately from the steady-state step time (median of ``--steps``
timed steps after two warm-up steps). Each method's step cost is also given as a multiple of
the vanilla step measured in the same run, next to its theoretical number of forward-backward
passes. Prints a table and writes JSON (``--out``).
"""

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Forward-backward passes per step relative to vanilla's one (theory, see each method).
THEORETICAL_PASSES = {
    'vanilla': 1.0,
    'advprop': None,   # PGD-n: n attack passes + clean + adversarial = n + 2 (filled from config)
    'mixprop': 2.0,    # clean + mixed batch
    'mixup': 1.0,
    'pgd_at': 11.0,    # PGD-10 + 1 training pass
    'trades': 12.0,    # clean logits + 10 KL attack steps + clean/adv training pass
    'gnt': 1.0,
}


def _batch(n, size, channels, num_classes, seed=0):
  rng = np.random.default_rng(seed)
  return {'image': rng.uniform(size=(n, size, size, channels)).astype(np.float32),
          'label': rng.integers(0, num_classes, n).astype(np.int32)}


def measure(method_name: str, model_name: str, batch_size: int, *, image_size: int = 32,
            num_classes: int = 10, steps: int = 10, overrides: dict | None = None) -> dict:
  """Compile time and steady-state images/s of one method's train step."""
  from configs import default  # pylint: disable=g-import-not-at-top
  from jaxrobust import methods, models, optim, parallel, train  # pylint: disable=g-import-not-at-top
  from jaxrobust.methods.base import Context  # pylint: disable=g-import-not-at-top

  config = default.get_config()
  config.method, config.model, config.batch_size = method_name, model_name, batch_size
  config.num_epochs = 1.0
  for k, v in (overrides or {}).items():
    config[k] = v
  mesh = parallel.make_mesh()
  parallel.check_batch_size(batch_size, mesh)
  method = methods.get(method_name)(config)
  model = models.create_model(model_name, num_classes=num_classes, image_size=image_size,
                              affine_domains=method.affine_domains())
  tx = optim.make_optimizer(config, steps_per_epoch=100)

  class Info:
    image_shape = (image_size, image_size, 3)
    num_classes = 10
    name = 'synthetic'
    num_examples = {'train': batch_size * 100}
  method.setup(Context(config=config, model=model, tx=tx, info=Info, mesh=mesh,
                       steps_per_epoch=100, total_steps=100))
  state = parallel.replicate(train.create_train_state(config, method, model, tx, Info,
                                                      jax.random.PRNGKey(0)), mesh)
  step = train.make_train_step(method, config, mesh)
  batches = [parallel.shard_batch(_batch(batch_size, image_size, 3, num_classes, i), mesh)
             for i in range(2)]
  start = time.perf_counter()
  compiled = step.lower(state, batches[0]).compile()
  compile_s = time.perf_counter() - start
  for i in range(2):  # warm-up
    state, m = compiled(state, batches[i % 2])
  jax.block_until_ready(m)
  times = []
  for i in range(steps):
    t = time.perf_counter()
    state, m = compiled(state, batches[i % 2])
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t)
  step_s = float(np.median(times))
  return {'method': method_name, 'model': model_name, 'batch_size': batch_size,
          'image_size': image_size, 'backend': jax.default_backend(),
          'devices': mesh.devices.size, 'compile_s': compile_s, 'step_s': step_s,
          'images_per_s': batch_size / step_s, 'overrides': overrides or {}}


def theoretical_passes(method_name: str, overrides: dict) -> float | None:
  if method_name == 'advprop':
    from jaxrobust import attacks  # pylint: disable=g-import-not-at-top
    preset = overrides.get('advprop_attack', 'advprop_pgd1')
    return attacks.presets.attack_kwargs(preset)['num_steps'] + 2.0
  return THEORETICAL_PASSES.get(method_name)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--models', default='resnet8_wide,resnet20')
  p.add_argument('--batch_sizes', default='128')
  p.add_argument('--methods', default='vanilla')
  p.add_argument('--image_size', type=int, default=32)
  p.add_argument('--steps', type=int, default=5)
  p.add_argument('--override', action='append', default=[],
                 help='method:key=value, e.g. advprop:advprop_attack=advprop_pgd1')
  p.add_argument('--out', default='benchmarks/throughput.json')
  args = p.parse_args()
  per_method = {}
  for o in args.override:
    meth, kv = o.split(':', 1)
    key, value = kv.split('=', 1)
    try:
      value = json.loads(value)
    except json.JSONDecodeError:
      pass
    per_method.setdefault(meth, {})[key] = value
  rows = []
  for model in args.models.split(','):
    for bs in (int(b) for b in args.batch_sizes.split(',')):
      base = None
      for meth in ['vanilla'] + [m for m in args.methods.split(',') if m != 'vanilla']:
        r = measure(meth, model, bs, image_size=args.image_size, steps=args.steps,
                    overrides=per_method.get(meth))
        base = base or r['step_s']
        r['relative_cost'] = r['step_s'] / base
        r['theoretical_passes'] = theoretical_passes(meth, per_method.get(meth, {}))
        rows.append(r)
        print(f"{r['method']:>10} {r['model']:>14} bs={bs:<4} {r['backend']}x{r['devices']} "
              f"compile {r['compile_s']:6.1f}s  step {1e3 * r['step_s']:8.1f}ms  "
              f"{r['images_per_s']:8.1f} img/s  cost x{r['relative_cost']:.2f} "
              f"(theory x{r['theoretical_passes'] if r['theoretical_passes'] else '?'})",
              flush=True)
  os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(rows, f, indent=1)
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
