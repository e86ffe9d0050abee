"""Training-step cost of Auxiliary Training relative to vanilla training (to be merged into
``benchmarks/throughput.py``).

An Auxiliary Training step runs the backbone on the clean batch and on one corrupted copy per
training corruption (plus the heads and the corruptions themselves), so with the paper's four
corruptions it should cost about five vanilla steps; inference cost is unchanged (the exported
model is the plain backbone).

    python benchmarks/auxtrain_cost.py --model=resnet_tiny --image_size=16 --batch_size=16
"""

import argparse
import json
import os
import sys
import time
from typing import Optional

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import default  # noqa: E402  pylint: disable=g-import-not-at-top
from jaxrobust import methods, models, optim, parallel, train  # noqa: E402
from jaxrobust.methods.base import Context  # noqa: E402


def _time_method(method_name: str, *, model_name: str, image_shape: tuple, num_classes: int,
                 batch_size: int, steps: int, mesh, overrides: dict) -> dict:
  """Compiles one method's step on random data and times ``steps`` steps after a warm-up step."""
  config = default.get_config()
  config.method = method_name
  config.model = model_name
  config.batch_size = batch_size
  config.lr_schedule = 'constant'
  for key, value in overrides.items():
    setattr(config, key, value)
  method = methods.get(method_name)(config)
  model = models.create_model(model_name, num_classes=num_classes, image_size=image_shape[0],
                              affine_domains=method.affine_domains())
  tx = optim.make_optimizer(config, steps_per_epoch=steps + 1)
  method.setup(Context(config=config, model=model, tx=tx, info=None, mesh=mesh,
                       steps_per_epoch=steps + 1, total_steps=steps + 1))

  class _Info:
    pass
  _Info.image_shape = image_shape
  state = parallel.replicate(
      train.create_train_state(config, method, model, tx, _Info, jax.random.PRNGKey(0)), mesh)
  rng = np.random.default_rng(0)
  batch = parallel.shard_batch(
      {'image': rng.uniform(size=(batch_size,) + image_shape).astype(np.float32),
       'label': rng.integers(0, num_classes, batch_size).astype(np.int32)}, mesh)
  step = train.make_train_step(method, config, mesh)
  t0 = time.perf_counter()
  state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t0
  t0, c0 = time.perf_counter(), time.process_time()
  for _ in range(steps):
    state, metrics = step(state, batch)
  jax.block_until_ready((state, metrics))
  step_s = (time.perf_counter() - t0) / steps
  # CPU seconds of this process per step: on a shared CPU host it is less noisy than wall time.
  cpu_s = (time.process_time() - c0) / steps
  return {'step_s': step_s, 'process_cpu_s': cpu_s, 'compile_s': compile_s,
          'images_per_s': batch_size / step_s}


def auxtrain_step_cost(model_name: str = 'resnet_tiny', image_size: int = 16, channels: int = 3,
                       num_classes: int = 10, batch_size: int = 16, steps: int = 5,
                       num_devices: Optional[int] = 1, overrides: Optional[dict] = None) -> dict:
  """Seconds per training step of ``auxtrain`` and ``vanilla`` on the same model and batch.

  Args:
    model_name: a ``jaxrobust.models`` name.
    image_size, channels: random images of shape [batch, size, size, channels].
    num_classes: logits.
    batch_size: global batch size (a multiple of the number of devices).
    steps: timed steps (after one compiling step).
    num_devices: devices of the mesh (None = all).
    overrides: config values for the auxtrain run (e.g. ``auxtrain_corruptions``).

  Returns:
    ``{'vanilla': {...}, 'auxtrain': {...}, 'relative_step_time': auxtrain / vanilla (wall),
    'relative_process_cpu': the same in CPU seconds of this process, 'num_corruptions': t,
    'device': platform, ...}``; each method's dict has ``step_s`` (wall), ``process_cpu_s``,
    ``compile_s`` and ``images_per_s`` (clean images per second).
  """
  devices = jax.devices() if num_devices is None else jax.devices()[:num_devices]
  mesh = parallel.make_mesh(devices)
  kwargs = dict(model_name=model_name, image_shape=(image_size, image_size, channels),
                num_classes=num_classes, batch_size=batch_size, steps=steps, mesh=mesh)
  vanilla = _time_method('vanilla', overrides={}, **kwargs)
  aux_overrides = dict(overrides or {})
  aux = _time_method('auxtrain', overrides=aux_overrides, **kwargs)
  num_corruptions = len(methods.get('auxtrain')(_with(default.get_config(), aux_overrides))
                        .corruption_names)
  return {'vanilla': vanilla, 'auxtrain': aux,
          'relative_step_time': aux['step_s'] / vanilla['step_s'],
          'relative_process_cpu': aux['process_cpu_s'] / vanilla['process_cpu_s'],
          'num_corruptions': num_corruptions, 'device': devices[0].platform,
          'num_devices': len(devices), 'model': model_name, 'batch_size': batch_size,
          'image_size': image_size}


def _with(config, overrides):
  for key, value in overrides.items():
    setattr(config, key, value)
  return config


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='resnet_tiny')
  parser.add_argument('--image_size', type=int, default=16)
  parser.add_argument('--channels', type=int, default=3)
  parser.add_argument('--batch_size', type=int, default=16)
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--num_devices', type=int, default=1, help='0 = all devices')
  args = parser.parse_args(argv)
  result = auxtrain_step_cost(args.model, args.image_size, args.channels, 10, args.batch_size,
                              args.steps, args.num_devices or None)
  print(json.dumps(result, indent=2))
  return result


if __name__ == '__main__':
  main()
