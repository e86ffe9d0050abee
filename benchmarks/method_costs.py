"""Step cost of any registered method relative to vanilla, next to its theoretical pass count.

For each method the compiled training step (the loop's ``train.make_train_step``: ``jit`` of the
per-device step under ``shard_map``) is timed on synthetic data after compilation, on the current
backend, and reported as a multiple of the vanilla step timed the same way. The theoretical count
is the method's ``forward_backward_passes()`` (forward+backward passes over the batch; a forward
alone counts 1/3), e.g. AdvProp PGD-n: n + 2, MixProp: 2, Mixup: 1, PGD-AT PGD-10: 11,
TRADES PGD-10: 10 + 1/3 + 2; methods that do not define it show "n/a".

    python benchmarks/method_costs.py --methods=advprop,mixprop --model=resnet_tiny --image_size=16
    python benchmarks/method_costs.py --methods=advprop:advprop_attack=advprop_pgd5,pgd_at

Each ``--methods`` entry is ``name[:key=value[;key=value...]]`` with config overrides (values are
parsed as Python literals when possible). ``measure_step`` / ``compare`` are the library API.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import sys
import time
from typing import Optional, Sequence

if __package__ in (None, ''):  # run as a script: make the repository importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import default  # noqa: E402
from jaxrobust import methods, models, optim, parallel, train  # noqa: E402
from jaxrobust.methods.base import Context  # noqa: E402


CLOCKS = {'wall': time.perf_counter, 'cpu': time.process_time}


@dataclasses.dataclass(frozen=True)
class _Info:
  """The parts of ``data.DatasetInfo`` a step needs, for synthetic data."""
  image_shape: tuple
  num_classes: int
  name: str = 'synthetic'


@dataclasses.dataclass
class StepCost:
  """Timing of one method's step."""
  method: str
  overrides: dict
  seconds_per_step: float
  theoretical_passes: Optional[float]
  compile_seconds: float
  num_devices: int = 1
  relative: Optional[float] = None  # filled in by :func:`compare`


def _config(method: str, overrides: dict, *, model: str, batch_size: int):
  c = default.get_config()
  c.method = method
  c.model = model
  c.batch_size = batch_size
  c.lr_schedule = 'constant'
  c.learning_rate = 0.01
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def theoretical_passes(method_obj) -> Optional[float]:
  """The method's own count of forward+backward passes per step (vanilla: 1), or None."""
  fn = getattr(method_obj, 'forward_backward_passes', None)
  if fn is not None:
    return float(fn())
  return 1.0 if method_obj.name == 'vanilla' else None


def measure_step(method: str, overrides: Optional[dict] = None, *, model: str = 'resnet_tiny',
                 image_size: int = 16, channels: int = 3, num_classes: int = 10,
                 batch_size: int = 32, steps: int = 5, repeats: int = 3,
                 devices: Optional[Sequence] = None, seed: int = 0,
                 clock: str = 'wall') -> StepCost:
  """Times ``steps`` compiled training steps of ``method`` on synthetic images.

  Args:
    method: a registered method name.
    overrides: config overrides (e.g. ``{'advprop_attack': 'advprop_pgd1'}``).
    model: backbone name.
    image_size, channels, num_classes: synthetic data shape.
    batch_size: global batch size (a multiple of the number of devices).
    steps: steps per timed window (after the compiling step).
    repeats: timed windows; the fastest is reported (robust to other load on the machine).
    clock: 'wall' (elapsed time: what an accelerator run costs) or 'cpu' (process CPU time of
      all threads: a stable measure of work on a CPU host shared with other jobs).
    devices: devices of the mesh (default: all).
    seed: data and init seed.

  Returns:
    A :class:`StepCost` (``relative`` unset).
  """
  if clock not in CLOCKS:
    raise ValueError(f'Unknown clock {clock!r}; allowed values: {tuple(CLOCKS)}.')
  now = CLOCKS[clock]
  overrides = dict(overrides or {})
  config = _config(method, overrides, model=model, batch_size=batch_size)
  train.validate_config(config)
  mesh = parallel.make_mesh(devices)
  parallel.check_batch_size(batch_size, mesh)
  m = methods.get(method)(config)
  info = _Info((image_size, image_size, channels), num_classes)
  net = models.create_model(model, num_classes=num_classes, image_size=image_size,
                            affine_domains=m.affine_domains(),
                            bn_axis_name=parallel.AXIS if config.sync_batch_stats else None)
  steps_per_epoch = 100
  tx = optim.make_optimizer(config, steps_per_epoch)
  m.setup(Context(config=config, model=net, tx=tx, info=info, mesh=mesh,
                  steps_per_epoch=steps_per_epoch, total_steps=steps_per_epoch))
  state = parallel.replicate(
      train.create_train_state(config, m, net, tx, info, jax.random.PRNGKey(seed)), mesh)
  step = train.make_train_step(m, config, mesh)
  rng = np.random.default_rng(seed)
  batch = parallel.shard_batch(
      {'image': rng.uniform(size=(batch_size,) + info.image_shape).astype(np.float32),
       'label': rng.integers(0, num_classes, batch_size).astype(np.int32)}, mesh)
  t0 = now()
  state, metrics = step(state, batch)
  jax.block_until_ready((state, metrics))
  compile_s = now() - t0
  per_step = float('inf')
  for _ in range(max(1, repeats)):
    t0 = now()
    for _ in range(steps):
      state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    per_step = min(per_step, (now() - t0) / steps)
  return StepCost(method, overrides, per_step, theoretical_passes(m), compile_s,
                  num_devices=mesh.devices.size)


def compare(entries: Sequence[tuple[str, dict]], **kwargs) -> list[StepCost]:
  """Measures vanilla and every ``(method, overrides)`` entry; fills in ``relative``."""
  base = measure_step('vanilla', {}, **kwargs)
  base.relative = 1.0
  results = [base]
  for method, overrides in entries:
    cost = measure_step(method, overrides, **kwargs)
    cost.relative = cost.seconds_per_step / base.seconds_per_step
    results.append(cost)
  return results


def format_table(results: Sequence[StepCost], clock: str = 'wall') -> str:
  """A plain-text table: method, overrides, ms/step, x vanilla, theoretical passes."""
  devices = results[0].num_devices if results else 0
  lines = [f'step cost relative to vanilla ({jax.default_backend()}, {devices} device(s), '
           f'{clock} clock)',
           f'{"method":<10} {"overrides":<34} {"ms/step":>9} {"x vanilla":>10} {"theory":>7}']
  for r in results:
    ov = ';'.join(f'{k}={v}' for k, v in r.overrides.items()) or '-'
    theory = 'n/a' if r.theoretical_passes is None else f'{r.theoretical_passes:.2f}'
    lines.append(f'{r.method:<10} {ov:<34} {1e3 * r.seconds_per_step:>9.2f} '
                 f'{r.relative:>10.2f} {theory:>7}')
  return '\n'.join(lines)


def parse_entry(text: str) -> tuple[str, dict]:
  """``'advprop:advprop_attack=advprop_pgd1;advprop_eps=0.0'`` -> ``('advprop', {...})``."""
  name, _, rest = text.partition(':')
  overrides = {}
  for item in filter(None, rest.split(';')):
    key, sep, value = item.partition('=')
    if not sep:
      raise ValueError(f'Bad override {item!r} in {text!r}; expected key=value.')
    try:
      overrides[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      overrides[key] = value
  methods.get(name)  # ValueError listing the valid names
  return name, overrides


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--methods', default='advprop:advprop_attack=advprop_pgd1,mixprop',
                      help='comma-separated name[:key=value;...] entries')
  parser.add_argument('--model', default='resnet_tiny')
  parser.add_argument('--image_size', type=int, default=16)
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--num_devices', type=int, default=0, help='0 = all devices')
  parser.add_argument('--clock', default='wall', choices=tuple(CLOCKS))
  args = parser.parse_args(argv)
  entries = [parse_entry(e) for e in args.methods.split(',') if e]
  devices = jax.devices()[:args.num_devices] if args.num_devices else None
  results = compare(entries, model=args.model, image_size=args.image_size,
                    batch_size=args.batch_size, steps=args.steps, repeats=args.repeats,
                    devices=devices, clock=args.clock)
  print(format_table(results, args.clock))
  return results


if __name__ == '__main__':
  main()
