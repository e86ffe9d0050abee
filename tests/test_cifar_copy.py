"""The real CIFAR-10 copy through the folder pipeline (skips when ../shared/data is absent)."""

import ml_collections
import numpy as np

from jaxrobust import data


def test_folder_cifar10_test_split(cifar10_path):
  config = ml_collections.ConfigDict({'dataset': f'folder:{cifar10_path}', 'image_size': 0,
                                      'augment': 'auto', 'train_split': '', 'eval_split': '',
                                      'data_dir': ''})
  info = data.get_info(config)
  assert info.num_examples == {'train': 50_000, 'test': 10_000}
  assert info.class_names[:3] == ('airplane', 'automobile', 'bird')
  assert info.image_shape == (32, 32, 3) and info.in_memory and info.augment == 'cifar'
  source = data.InMemorySource(info, 'test')
  assert source.images.shape == (10_000, 32, 32, 3)
  np.testing.assert_array_equal(np.bincount(source.labels), [1000] * 10)
  # any prefix is a random subset, not one class (max_examples evaluations rely on it)
  assert len(np.unique(source.labels[:100])) == 10
  # CIFAR-10 statistics: per-channel means near (0.49, 0.48, 0.45)
  mean = source.images.reshape(-1, 3).mean(0) / 255
  np.testing.assert_allclose(mean, (0.4914, 0.4822, 0.4465), atol=0.02)
