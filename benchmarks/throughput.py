"""Training-step throughput and cost of every method relative to vanilla, on the current backend.

For each model and batch size, every method's compiled training step (the loop's own
``train.make_train_step``: ``jit`` of the per-device step under ``shard_map``) is timed on
synthetic data after compilation, and reported as images/s and as a multiple of the vanilla
step timed the same way in the same run, next to the method's theoretical count of
forward+backward passes (``Method.forward_backward_passes``; a forward alone counts 1/3):
AdvProp PGD-n n + 2, MixProp 2, Mixup 1, PGD-AT PGD-10 11, TRADES 10 + 1/3 + 2, GNT 1, ANT 2,
Auxiliary Training 5, EWS 2. Periodic hooks are timed too: EWS's controller search (as a
multiple of one epoch's training time at the config's search interval) and ANT's generator
restart, each as the share it adds to training; an epoch is ``--train_examples`` // batch.

    python benchmarks/throughput.py                                    # CPU-sized defaults
    python benchmarks/throughput.py --methods=advprop:advprop_attack=advprop_pgd1,mixprop
    python benchmarks/throughput.py --models=resnet18,wrn28_10 --batch_sizes=128,256 \
        --image_size=32 --steps=20                                     # on an accelerator

Each ``--methods`` entry is ``name[:key=value[;key=value...]]`` (values parsed as Python
literals when possible). Steady-state time is the fastest of ``--repeats`` windows of
``--steps`` steps (robust to other load on a shared machine); ``--clock=cpu`` measures process
CPU time instead of wall time. ``measure_step`` / ``compare`` are the library API.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import sys
import time
from typing import Callable, Optional, Sequence

if __package__ in (None, ''):  # run as a script: make the repository importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import default  # noqa: E402
from jaxrobust import methods, models, optim, parallel, train  # noqa: E402
from jaxrobust.methods.base import Context  # noqa: E402

CLOCKS = {'wall': time.perf_counter, 'cpu': time.process_time}
DEFAULT_METHODS = ('advprop:advprop_attack=advprop_pgd1,mixprop,mixup,vanilla:augmix=True,'
                   'vanilla:device_augment=autoaugment_cifar10;cutout_size=16,'
                   'pgd_at,trades,gnt,ant,auxtrain,ews,ews:augmix=True')


@dataclasses.dataclass(frozen=True)
class _Info:
  """The parts of ``data.DatasetInfo`` a step needs, for synthetic data."""
  image_shape: tuple
  num_classes: int
  name: str = 'synthetic'


@dataclasses.dataclass
class StepCost:
  """Timing of one method's step (and, for EWS, of its search phase)."""
  method: str
  overrides: dict
  model: str
  batch_size: int
  seconds_per_step: float
  theoretical_passes: float
  compile_seconds: float
  num_devices: int = 1
  relative: Optional[float] = None          # filled in by :func:`compare`
  search_seconds: Optional[float] = None    # EWS: one search phase
  search_epochs: Optional[float] = None     # EWS: search interval K in epochs
  # Every periodic hook (EWS's search, ANT's generator restart): name, seconds, every_steps.
  hooks: list = dataclasses.field(default_factory=list)

  @property
  def images_per_second(self) -> float:
    return self.batch_size / self.seconds_per_step


def _config(method: str, overrides: dict, *, model: str, batch_size: int):
  c = default.get_config()
  c.method, c.model, c.batch_size = method, model, batch_size
  c.lr_schedule, c.learning_rate = 'constant', 0.01
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def _synthetic_batch(batch_size, image_shape, num_classes, seed):
  rng = np.random.default_rng(seed)
  return {'image': rng.uniform(size=(batch_size,) + tuple(image_shape)).astype(np.float32),
          'label': rng.integers(0, num_classes, batch_size).astype(np.int32)}


def measure_step(method: str, overrides: Optional[dict] = None, *, model: str = 'resnet_tiny',
                 image_size: int = 16, channels: int = 3, num_classes: int = 10,
                 batch_size: int = 32, steps: int = 5, repeats: int = 3,
                 devices: Optional[Sequence] = None, seed: int = 0, clock: str = 'wall',
                 steps_per_epoch: int = 390) -> StepCost:
  """Times ``steps`` compiled training steps of ``method`` on synthetic images.

  Args:
    method: a registered method name.
    overrides: config overrides (e.g. ``{'advprop_attack': 'advprop_pgd1'}``).
    model: backbone name.
    image_size, channels, num_classes: synthetic data shape.
    batch_size: global batch size (a multiple of the number of devices).
    steps: steps per timed window (after the compiling step).
    repeats: timed windows; the fastest is reported.
    devices: devices of the mesh (default: all).
    seed: data and init seed.
    clock: 'wall' (elapsed time: what an accelerator run costs) or 'cpu' (process CPU time of
      all threads: a stable measure of work on a CPU host shared with other jobs).
    steps_per_epoch: epoch length the hooks assume (EWS's search subset is 10% of an epoch,
      and its interval is in epochs): the training set's size over ``batch_size``.

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
  tx = optim.make_optimizer(config, steps_per_epoch)
  batch = parallel.shard_batch(_synthetic_batch(batch_size, info.image_shape, num_classes, seed),
                               mesh)

  def train_batches(num_batches, unused_seed):
    return (batch for _ in range(num_batches))
  m.setup(Context(config=config, model=net, tx=tx, info=info, mesh=mesh,
                  steps_per_epoch=steps_per_epoch, total_steps=steps_per_epoch,
                  train_batches=train_batches))
  state = parallel.replicate(
      train.create_train_state(config, m, net, tx, info, jax.random.PRNGKey(seed)), mesh)
  step = train.make_train_step(m, config, mesh)
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
  cost = StepCost(method, overrides, model, batch_size, per_step,
                  float(m.forward_backward_passes()), compile_s, num_devices=mesh.devices.size)
  for hook in m.hooks():
    # Two untimed calls compile everything (EWS: the search, then the controller restart every
    # later search begins with; ANT: the restart's scan). Hooks may donate the state.
    for _ in range(2):
      state = jax.block_until_ready(hook.fn(state))
    t0 = now()
    state = jax.block_until_ready(hook.fn(state))
    seconds = now() - t0
    cost.hooks.append({'name': hook.name, 'seconds': seconds, 'every_steps': hook.every_steps})
    if hook.name == 'ews_search':
      cost.search_seconds, cost.search_epochs = seconds, m.search_every_epochs
  return cost


def compare(entries: Sequence[tuple[str, dict]], *,
            on_result: Optional[Callable[[StepCost], None]] = None, **kwargs) -> list[StepCost]:
  """Measures vanilla and every ``(method, overrides)`` entry; fills in ``relative``.

  ``on_result`` is called with each cost as soon as it is measured, so a long run that is
  stopped part-way (a time-limited accelerator lease) still reports what it finished.
  """
  base = measure_step('vanilla', {}, **kwargs)
  base.relative = 1.0
  results = [base]
  if on_result:
    on_result(base)
  for method, overrides in entries:
    if method == 'vanilla' and not overrides:
      continue
    cost = measure_step(method, overrides, **kwargs)
    cost.relative = cost.seconds_per_step / base.seconds_per_step
    results.append(cost)
    if on_result:
      on_result(cost)
  return results


def format_table(results: Sequence[StepCost], clock: str = 'wall',
                 steps_per_epoch: int = 390) -> str:
  """Plain text: method, overrides, ms/step, images/s, x vanilla, theory (+ EWS search)."""
  r0 = results[0]
  overrides = [';'.join(f'{k}={v}' for k, v in r.overrides.items()) or '-' for r in results]
  width = max([30] + [len(ov) for ov in overrides])  # columns stay aligned for long overrides
  lines = [f'{r0.model}, batch {r0.batch_size}, {jax.default_backend()} x {r0.num_devices} '
           f'device(s), {clock} clock',
           f'{"method":<10} {"overrides":<{width}} {"compile s":>9} {"ms/step":>9} {"img/s":>8} '
           f'{"x vanilla":>10} {"theory":>7}']
  for r, ov in zip(results, overrides):
    lines.append(f'{r.method:<10} {ov:<{width}} {r.compile_seconds:>9.1f} '
                 f'{1e3 * r.seconds_per_step:>9.2f} {r.images_per_second:>8.1f} '
                 f'{r.relative:>10.2f} {r.theoretical_passes:>7.2f}')
  for r in results:
    if r.search_seconds is not None:
      epoch_s = steps_per_epoch * r.seconds_per_step
      lines.append(f'{r.method}: one controller search {r.search_seconds:.2f} s = '
                   f'{r.search_seconds / epoch_s:.3f} epochs of its training; every '
                   f'{r.search_epochs:g} epochs that adds '
                   f'{100 * r.search_seconds / (epoch_s * r.search_epochs):.1f}% to training.')
    for h in r.hooks:
      if h['name'] != 'ews_search':
        lines.append(f'{r.method}: {h["name"]} {h["seconds"]:.2f} s every {h["every_steps"]} '
                     f'steps adds {100 * h["seconds"] / (h["every_steps"] * r.seconds_per_step):.1f}'
                     '% to training.')
  lines.append('(The first row\'s compile time includes the backend\'s one-time start-up. Hooks '
               'and searches reuse one device-resident batch: no input pipeline is timed.)')
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


def _progress(r: StepCost) -> None:
  extra = f', search {r.search_seconds:.2f} s' if r.search_seconds is not None else ''
  print(f'measured {r.method} {r.overrides or ""} ({r.model}, batch {r.batch_size}): '
        f'{1e3 * r.seconds_per_step:.2f} ms/step, x{r.relative:.2f} vanilla, '
        f'compile {r.compile_seconds:.1f} s{extra}', file=sys.stderr, flush=True)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--methods', default=DEFAULT_METHODS,
                      help='comma-separated name[:key=value;...] entries')
  parser.add_argument('--models', default='resnet8_wide')
  parser.add_argument('--batch_sizes', default='128')
  parser.add_argument('--image_size', type=int, default=32)
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--num_devices', type=int, default=0, help='0 = all devices')
  parser.add_argument('--clock', default='wall', choices=tuple(CLOCKS))
  parser.add_argument('--train_examples', type=int, default=50000,
                      help='training-set size: epoch length (and so the hooks\' intervals and '
                           'EWS\'s search subset) is train_examples // batch size')
  parser.add_argument('--steps_per_epoch', type=int, default=0,
                      help='epoch length in steps; 0 = train_examples // batch size')
  parser.add_argument('--out', default='', help='JSON output path (optional)')
  args = parser.parse_args(argv)
  entries, models_, batch_sizes = _checked_arguments(parser, args)
  devices = jax.devices()[:args.num_devices] if args.num_devices else None
  everything = []

  def on_result(cost):
    _progress(cost)
    everything.append(cost)
    if args.out:  # after every measurement: a stopped run keeps what it finished
      os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
      with open(args.out, 'w') as f:
        json.dump([dataclasses.asdict(r) | {'backend': jax.default_backend()}
                   for r in everything], f, indent=1)

  for model in models_:
    for batch_size in batch_sizes:
      steps_per_epoch = args.steps_per_epoch or max(1, args.train_examples // batch_size)
      results = compare(entries, on_result=on_result, model=model, image_size=args.image_size,
                        batch_size=batch_size, steps=args.steps, repeats=args.repeats,
                        devices=devices, clock=args.clock, steps_per_epoch=steps_per_epoch)
      print(format_table(results, args.clock, steps_per_epoch), flush=True)
  return everything


def _checked_arguments(parser, args):
  """Every (model, batch size, entry) validated before anything compiles: a typo found after
  minutes of compiling on a leased accelerator is a waste of that lease."""
  for name in ('steps', 'repeats', 'train_examples'):
    if getattr(args, name) < 1:
      parser.error(f'--{name}={getattr(args, name)} must be >= 1.')
  if args.steps_per_epoch < 0:
    parser.error(f'--steps_per_epoch={args.steps_per_epoch} must be >= 0 (0 = derived).')
  try:
    batch_sizes = [int(b) for b in args.batch_sizes.split(',')]
  except ValueError:
    parser.error(f'--batch_sizes={args.batch_sizes!r}: expected comma-separated integers.')
  models_ = [m for m in args.models.split(',') if m]
  try:
    entries = [parse_entry(e) for e in args.methods.split(',') if e]
    for model in models_:
      for batch_size in batch_sizes:
        for method, overrides in [('vanilla', {})] + entries:
          config = _config(method, dict(overrides), model=model, batch_size=batch_size)
          train.validate_config(config)
  except (ValueError, KeyError, AttributeError) as e:
    parser.error(str(e))
  return entries, models_, batch_sizes


if __name__ == '__main__':
  main()
