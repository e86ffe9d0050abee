"""Test set-up: 8 simulated CPU devices, quiet TF, shared fixtures."""

import functools
import os
import pathlib
import sys

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def _share_compilations() -> None:
  """Points JAX's persistent compilation cache at one fresh folder for the whole test run.

  Many tests compile the same tiny programs (a resnet_tiny step on the digits, the same
  evaluation), in this process, in the other xdist worker and in the subprocesses the notebook,
  CLI and multi-process tests start; on this CPU the cache cuts the suite's time by about a
  third. The cache is keyed by the compiled program and its options, so it changes no result.
  The xdist controller (or a plain pytest process) makes the folder before any worker starts;
  workers and subprocesses inherit it through the environment, and it is removed at exit.
  """
  if 'PYTEST_XDIST_WORKER' in os.environ or 'JAX_COMPILATION_CACHE_DIR' in os.environ:
    return
  import atexit  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  folder = tempfile.mkdtemp(prefix='jaxrobust-test-compilations-')
  atexit.register(shutil.rmtree, folder, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = folder
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')


_share_compilations()

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))


def cifar_dir() -> pathlib.Path:
  """The real CIFAR-10 copy: $JAXROBUST_CIFAR10_DIR or ../shared/data/cifar10 beside the repo."""
  return pathlib.Path(os.environ.get('JAXROBUST_CIFAR10_DIR',
                                     ROOT.parent / 'shared' / 'data' / 'cifar10'))


@pytest.fixture
def cifar10_path():
  path = cifar_dir()
  if not (path / 'train').is_dir():
    pytest.skip(f'real CIFAR-10 copy not found at {path} (set JAXROBUST_CIFAR10_DIR)')
  return path


def tiny_config(**overrides):
  """A config for fast end-to-end runs on the bundled digits."""
  from configs import quickstart  # pylint: disable=g-import-not-at-top
  c = quickstart.get_config()
  c.model = 'resnet_tiny'
  c.num_epochs = 1.0
  c.batch_size = 64
  c.eval_batch_size = 128
  c.log_every_steps = 5
  c.eval_every_epochs = 0.0
  c.checkpoint_every_steps = 5
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


# ------------------------------------------------------------------ method-step test helpers
TINY_SHAPE = (8, 8, 3)   # the image shape of the step tests' random batches


def random_batch(seed: int = 0, size: int = 8, shape=TINY_SHAPE, num_classes: int = 10):
  """Images uniform in [0, 1] and random labels, as host arrays."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  return {'image': rng.uniform(size=(size,) + tuple(shape)).astype(np.float32),
          'label': rng.integers(0, num_classes, size).astype(np.int32)}


@functools.lru_cache(maxsize=None)
def tiny_variables(affine_domains=(), bn_domains=('main',)):
  """resnet_tiny and its initial (params, {domain: stats}) as host arrays, built once per key."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxrobust import models, parallel  # pylint: disable=g-import-not-at-top
  model = models.create_model('resnet_tiny', num_classes=10, affine_domains=affine_domains)
  params, stats = models.init_variables(model, jax.random.PRNGKey(0), TINY_SHAPE, bn_domains)
  return model, parallel.to_host(params), parallel.to_host(stats)


def method_on_tiny_model(method: str, *, num_devices: int = 1, distinct_stats: bool = False,
                         **overrides):
  """``(config, mesh, method, model, state)``: ``method`` set up on resnet_tiny with SGD(0.1).

  ``state`` is on the host (not replicated). ``distinct_stats`` offsets the i-th BN domain's
  initial statistics by ``3 i``, so a test can tell which domain's statistics a pass used or
  changed.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from jaxrobust import methods, parallel  # pylint: disable=g-import-not-at-top
  from jaxrobust.methods.base import Context  # pylint: disable=g-import-not-at-top
  from jaxrobust.train_state import TrainState  # pylint: disable=g-import-not-at-top
  config = tiny_config(method=method, sync_batch_stats=False, **overrides)
  mesh = parallel.make_mesh(jax.devices()[:num_devices])
  m = methods.get(method)(config)
  model, params, stats = tiny_variables(tuple(m.affine_domains()), tuple(m.bn_domains()))
  tx = optax.sgd(0.1)
  m.setup(Context(config=config, model=model, tx=tx, info=None, mesh=mesh, steps_per_epoch=10,
                  total_steps=10))
  if distinct_stats:
    stats = {d: jax.tree.map(lambda a, i=i: a + 3.0 * i, s)
             for i, (d, s) in enumerate(stats.items())}
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     batch_stats=stats, rng=jax.random.PRNGKey(1), extras={})
  return config, mesh, m, model, state


def method_with_train_state(config, *, num_devices: int = 1, image_shape=TINY_SHAPE,
                            steps_per_epoch: int = 10, total_steps: int = 10,
                            replicate: bool = True):
  """``(mesh, method, model, state)``: ``config.method`` on resnet_tiny with SGD(0.1, 0.9),
  its state built by ``train.create_train_state`` (so with the method's extras: generators,
  replay buffers, heads); ``state`` replicated on the mesh unless ``replicate`` is False."""
  import types  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from jaxrobust import methods, models, parallel, train  # pylint: disable=g-import-not-at-top
  from jaxrobust.methods.base import Context  # pylint: disable=g-import-not-at-top
  mesh = parallel.make_mesh(jax.devices()[:num_devices])
  info = types.SimpleNamespace(image_shape=tuple(image_shape))
  m = methods.get(config.method)(config)
  model = models.create_model('resnet_tiny', num_classes=10)
  tx = optax.sgd(0.1, momentum=0.9)
  m.setup(Context(config=config, model=model, tx=tx, info=info, mesh=mesh,
                  steps_per_epoch=steps_per_epoch, total_steps=total_steps))
  state = train.create_train_state(config, m, model, tx, info, jax.random.PRNGKey(0))
  return mesh, m, model, (parallel.replicate(state, mesh) if replicate else state)
