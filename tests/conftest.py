"""Test set-up: 8 simulated CPU devices, quiet TF, shared fixtures."""

import os
import pathlib
import sys

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

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
