"""Host input-pipeline throughput: can this host feed the accelerator?

Times the training loop's own pipeline, ``data.train_iterator`` (a split held in memory or read
per file, augmentation keyed by ``(seed, epoch, index)``, batching, prefetch), in
images/s after a warm-up. Training runs at the slower of this figure and the step's images/s
from ``benchmarks/throughput.py``, so run both on the machine that trains. The dataset is named
as in a config, or is random images held in memory (no files needed, no decode at start).

    python benchmarks/input_pipeline.py                        # synthetic 32x32, CIFAR augmentation
    python benchmarks/input_pipeline.py --dataset=folder:../shared/data/cifar10
    python benchmarks/input_pipeline.py --image_size=224 --augment=imagenet  # 256x256 stored

``measure`` is the library API.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if __package__ in (None, ''):  # run as a script: make the repository importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from jaxrobust import data  # noqa: E402


class ArraySource(data.InMemorySource):
  """An in-memory split made of given arrays instead of a decoded dataset."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):  # pylint: disable=super-init-not-called
    self.images, self.labels = images, labels


def synthetic(num_examples: int, image_size: int, augment: str, seed: int = 0):
  """Random uint8 images, stored at ``image_size`` (``image_size * 8 / 7`` for the ImageNet
  augmentation, which crops and resizes), with the :class:`data.DatasetInfo` a run would have.

  Returns:
    ``(info, source)``.
  """
  if augment not in data.AUGMENTATIONS:
    raise ValueError(f'Unknown augment {augment!r}; allowed values: {data.AUGMENTATIONS}.')
  stored = image_size * 8 // 7 if augment == 'imagenet' else image_size
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (num_examples, stored, stored, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, num_examples).astype(np.int32)
  info = data.DatasetInfo('synthetic', 'synthetic', 10, (image_size, image_size, 3),
                          {'train': num_examples}, 'train', 'train', (0.5,) * 3, (0.25,) * 3,
                          augment, in_memory=True)
  return info, ArraySource(images, labels)


def measure(info: data.DatasetInfo, source=None, *, batch_size: int = 128, batches: int = 200,
            warmup: int = 20, seed: int = 0, repeats: int = 3) -> float:
  """Images/s that ``data.train_iterator`` delivers to the host, the fastest of ``repeats``.

  Args:
    info: the dataset's description (``data.get_info`` or :func:`synthetic`).
    source: its loaded split (``data.make_source``); loaded here when None.
    batch_size: global batch size (one process).
    batches: batches per timed window.
    warmup: batches taken before timing (tf.data starts its threads and tunes itself).
    seed: data seed.
    repeats: timed windows.

  Returns:
    Images per second, counting the images in the batches taken.
  """
  it = data.train_iterator(info, global_batch_size=batch_size, seed=seed, source=source)
  for _ in range(warmup):
    next(it)
  best = 0.0
  for _ in range(max(1, repeats)):
    t0, images = time.perf_counter(), 0
    for _ in range(batches):
      images += len(next(it)['label'])
    best = max(best, images / (time.perf_counter() - t0))
  return best


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--dataset', default='synthetic',
                      help="'synthetic' or a config's dataset string (digits, folder:PATH, TFDS name)")
  parser.add_argument('--image_size', type=int, default=0,
                      help="0: 32 for 'synthetic', else the dataset's own (as a run picks it)")
  parser.add_argument('--augment', default='auto', choices=('auto',) + data.AUGMENTATIONS,
                      help="auto: synthetic gets cifar, a dataset its own")
  parser.add_argument('--num_examples', type=int, default=50_000, help='synthetic set size')
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--batches', type=int, default=200)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args(argv)
  for name in ('num_examples', 'batch_size', 'batches', 'repeats'):
    if getattr(args, name) < 1:
      parser.error(f'--{name}={getattr(args, name)} must be >= 1.')
  if args.dataset == 'synthetic':
    info, source = synthetic(args.num_examples, args.image_size or 32,
                             'cifar' if args.augment == 'auto' else args.augment)
  else:
    config = ml_collections.ConfigDict({'dataset': args.dataset, 'image_size': args.image_size,
                                        'augment': args.augment})
    info = data.get_info(config)
    t0 = time.perf_counter()
    source = data.make_source(info, info.train_split)
    print(f'loaded {info.name} split {info.train_split!r} in {time.perf_counter() - t0:.1f} s',
          flush=True)
  rate = measure(info, source, batch_size=args.batch_size, batches=args.batches,
                 repeats=args.repeats)
  print(f'{info.name}: {info.image_shape} images, augment={info.augment}, batch '
        f'{args.batch_size}, {os.cpu_count()} CPU cores: {rate:,.0f} images/s')
  return rate


if __name__ == '__main__':
  main()
