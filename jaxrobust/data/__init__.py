"""Input pipelines: TFDS datasets by name, image folders, and scikit-learn's bundled digits.

Host-side tf.data decodes, augments and batches; corruptions, noise and attacks run on device.
Two paths:

* **In memory** (digits, folders and TFDS datasets of small images, e.g. CIFAR): the split is
  decoded once into a uint8 array. Epoch ``e`` visits the examples in the permutation
  ``default_rng([seed, e]).permutation(N)``; global batch ``b`` is rows ``[b*B, (b+1)*B)`` of it
  and process ``p`` of ``P`` takes its contiguous ``B/P`` part, so the global batch is the same
  for any number of processes. Augmentation is stateless, keyed by ``(seed, epoch, index)``;
  the crops and flips of :data:`BATCHED_AUGMENTATIONS` run on whole batches
  (:func:`pad_crop_flip` with :func:`crop_draws`), the rest per example.
  Resuming at step ``s`` starts exactly at batch ``s`` — no example seen twice or skipped.
* **Files read per example** (folders of large images, e.g. ImageNet as ``split/label/*.JPEG``):
  only the file names are in memory (:class:`FolderFiles`); epochs, process slices, augmentation
  keys and resume are those of the in-memory path, with each image read and decoded when used.
* **Streaming** (large TFDS datasets, e.g. ImageNet): each process reads its own slice
  (``tfds.split_for_jax_process``), one pipeline per epoch with its file order and shuffle keyed
  by ``(seed, epoch)``; a resumed run skips the batches of its epoch already done.

:func:`make_source` picks the first two; the iterators read a TFDS set by name when it is None.
"""

import dataclasses
import os
from typing import Iterator, Optional

import numpy as np
from absl import logging

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUGMENTATIONS = ('cifar', 'crop', 'imagenet', 'none')
# Digits: a flipped 2 or 5 is another glyph, so their recipes crop without flipping.
DIGIT_DATASETS = ('svhn_cropped', 'mnist')
KNOWN_TFDS = ('cifar10', 'cifar100', 'imagenet2012', 'svhn_cropped', 'mnist', 'fashion_mnist',
              'cifar10_corrupted/<corruption>_<severity>',
              'imagenet2012_corrupted/<corruption>_<severity>')


def _tf():
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError as e:  # setup.py leaves TF to requirements.txt or the runtime (Colab's)
    raise ImportError('The input pipeline (tf.data) needs TensorFlow: pip install -r '
                      'requirements.txt (tensorflow-cpu), or any tensorflow build.') from e
  # TF must not grab accelerator memory that JAX needs.
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # TF set up its GPUs already (e.g. a notebook that used TF first)
    if tf.config.list_logical_devices('GPU'):
      logging.log_first_n(logging.WARNING, 'TensorFlow had already set up its GPUs before '
                          'jaxrobust could hide them, so it may hold accelerator memory JAX '
                          'needs. Restart the runtime and import jaxrobust before using '
                          'TensorFlow, or set TF_FORCE_GPU_ALLOW_GROWTH=true.', 1)
  return tf


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the rest of the library needs to know about a dataset.

  Attributes:
    name: the config's dataset string.
    kind: 'digits', 'folder' or 'tfds'.
    num_classes: number of labels.
    image_shape: (H, W, C) of the images the model sees.
    num_examples: examples per split.
    train_split, eval_split: split names.
    mean, std: per-channel normalisation constants for the model's first layer.
    augment: training augmentation, one of AUGMENTATIONS.
    in_memory: whether splits are decoded into memory (see module docstring).
    class_names: label names if known.
  """
  name: str
  kind: str
  num_classes: int
  image_shape: tuple
  num_examples: dict
  train_split: str
  eval_split: str
  mean: tuple
  std: tuple
  augment: str
  in_memory: bool
  class_names: tuple = ()
  path: str = ''


# ----------------------------------------------------------------------------- sources


def _digits_arrays():
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # (N, 8, 8, 1)
  labels = digits.target.astype(np.int32)
  order = np.random.default_rng(0).permutation(len(labels))  # fixed 80/20 split
  cut = int(0.8 * len(labels))
  return {'train': (images[order[:cut]], labels[order[:cut]]),
          'test': (images[order[cut:]], labels[order[cut:]])}


def _folder_builder(path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  _tf()
  if not os.path.isdir(path):
    raise ValueError(f'Image folder {path!r} does not exist; expected the layout '
                     '<path>/<split>/<label>/*.jpg (e.g. folder:../shared/data/cifar10).')
  splits = [d for d in sorted(os.listdir(path)) if os.path.isdir(os.path.join(path, d))]
  if not splits:
    raise ValueError(f'Image folder {path!r} has no split directories; expected '
                     '<path>/<split>/<label>/*.jpg.')
  builder = tfds.ImageFolder(path)
  empty = [s for s, info in builder.info.splits.items() if info.num_examples == 0]
  if not builder.info.splits or empty or not builder.info.features['label'].names:
    raise ValueError(f'Image folder {path!r} has no images in split(s) {empty or splits}; '
                     'expected <path>/<split>/<label>/*.jpg|*.jpeg|*.png.')
  return builder


def _folder_default_size(builder, split) -> int:
  """The first file's size for a folder of small images (CIFAR-like, <= 64 px: 32 for CIFAR, 64
  for Tiny-ImageNet), else 224 (ImageNet-like): no folder is squeezed or blown up unasked."""
  tf = _tf()
  examples = builder._split_examples[split]  # pylint: disable=protected-access
  first = min(e.image_path for e in examples)
  shape = tf.io.extract_jpeg_shape(tf.io.read_file(first)) if first.lower().endswith(
      ('.jpg', '.jpeg')) else tf.shape(tf.io.decode_image(tf.io.read_file(first)))
  side = max(int(shape[0]), int(shape[1]))
  return side if side <= 64 else 224


def _find_unreadable(path, split):
  """Names the first file of a folder split that cannot be decoded."""
  tf = _tf()
  root = os.path.join(path, split)
  for label in sorted(os.listdir(root)):
    for fname in sorted(os.listdir(os.path.join(root, label))):
      f = os.path.join(root, label, fname)
      try:
        tf.io.decode_image(tf.io.read_file(f), channels=3, expand_animations=False)
      except Exception:  # pylint: disable=broad-except
        return f
  return None


def _load_split_arrays(info: DatasetInfo, split: str, data_dir: Optional[str]):
  """Decodes a whole split into (uint8 images [N,H,W,C], int32 labels [N]), deterministic order."""
  if info.kind == 'digits':
    return _digits_arrays()[split]
  tf = _tf()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  h, w, c = info.image_shape
  if info.kind == 'folder':
    ds = _folder_builder(info.path).as_dataset(split=split, shuffle_files=False)
  else:
    ds = tfds.load(info.name, split=split, data_dir=data_dir, shuffle_files=False)

  def fix(ex):
    image = ex['image']
    if image.shape[-1] != c:
      image = image[..., :1] if c == 1 else tf.image.grayscale_to_rgb(image)
    shape = tf.shape(image)
    image = tf.cond(tf.logical_and(shape[0] == h, shape[1] == w), lambda: image,
                    lambda: tf.cast(tf.clip_by_value(tf.round(
                        tf.image.resize(image, (h, w), antialias=True)), 0, 255), tf.uint8))
    name = ex.get('image/filename', tf.constant(''))
    return tf.ensure_shape(image, (h, w, c)), tf.cast(ex['label'], tf.int32), name

  ds = ds.map(fix, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(4096)
  images, labels, names = [], [], []
  try:
    for im, lb, nm in ds.as_numpy_iterator():
      images.append(im), labels.append(lb), names.append(nm)
  except tf.errors.OpError as e:
    bad = _find_unreadable(info.path, split) if info.kind == 'folder' else None
    raise ValueError(f'Cannot read dataset {info.name!r} split {split!r}: '
                     + (f'unreadable image file {bad!r}.' if bad else str(e).splitlines()[0]))
  images, labels, names = np.concatenate(images), np.concatenate(labels), np.concatenate(names)
  if info.kind == 'folder':
    order = _folder_order(names)
    images, labels = images[order], labels[order]
  return images, labels


def _folder_order(names) -> np.ndarray:
  """The fixed order of a folder split's files, whether decoded into memory or read per example.

  ImageFolder's file order is not guaranteed: sort by file name, then apply a fixed permutation
  so that the split is not grouped by class and any prefix of it (e.g. max_examples of an eval
  split) is a uniform random subset.
  """
  order = np.argsort(names, kind='stable')
  return order[np.random.default_rng(0).permutation(len(order))]


# ----------------------------------------------------------------------------- info


def get_info(config) -> DatasetInfo:
  """Resolves ``config.dataset`` ('digits', 'folder:/path' or a TFDS name); ValueError if bad."""
  name = config.dataset
  size = config.get('image_size', 0) or None
  augment = config.get('augment', 'auto')
  if augment not in AUGMENTATIONS + ('auto',):
    raise ValueError(f'Unknown augment {augment!r}; valid: auto, {", ".join(AUGMENTATIONS)}.')
  if name == 'digits':
    arrays = _digits_arrays()
    mean, std = _moments(arrays['train'][0])
    info = DatasetInfo(name, 'digits', 10, (8, 8, 1), {k: len(v[1]) for k, v in arrays.items()},
                       'train', 'test', mean, std, 'none', True, tuple(str(i) for i in range(10)))
  elif name.startswith('folder:'):
    path = os.path.expanduser(name[len('folder:'):])
    builder = _folder_builder(path)
    splits = {k: v.num_examples for k, v in builder.info.splits.items()}
    train_split, eval_split = _pick_splits(config, splits, f'Image folder {path!r}')
    size = size or _folder_default_size(builder, train_split)
    names = tuple(builder.info.features['label'].names)
    info = DatasetInfo(name, 'folder', len(names), (size, size, 3), splits, train_split,
                       eval_split, IMAGENET_MEAN, IMAGENET_STD, 'cifar' if size <= 64 else 'imagenet',
                       in_memory=size <= 64, class_names=names, path=path)
  else:
    info = _tfds_info(config, name, size)
  if augment != 'auto':
    info = dataclasses.replace(info, augment=augment)
  return info


# TFDS datasets whose 'test' split is unlabeled (imagenet2012 5.x: every label -1), so their
# default eval split is 'validation'.
UNLABELED_TEST_SPLIT = ('imagenet2012',)


def _pick_splits(config, splits: dict, where: str,
                 order: tuple[str, ...] = ('test', 'validation', 'val')) -> tuple[str, str]:
  """``(train_split, eval_split)``: the config's, else 'train' and the first of ``order``.

  No fallback to a split of the other role: evaluating on the training split (or training on the
  test split) would report numbers that mean something else. Naming one is the user's choice.
  """
  train_split = config.get('train_split', '') or 'train'
  eval_split = config.get('eval_split', '') or next((s for s in order if s in splits), None)
  if eval_split is None:
    raise ValueError(f'{where} has no evaluation split (looked for {", ".join(order)}); it has '
                     f'{sorted(splits)}. Add one, or name one with config.eval_split.')
  for key, s in (('train_split', train_split), ('eval_split', eval_split)):
    if s not in splits:
      raise ValueError(f'{key}={s!r} not found in {where}; it has {sorted(splits)}. Name one '
                       f'with config.{key}.')
  return train_split, eval_split


def _tfds_info(config, name, size) -> DatasetInfo:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  _tf()
  base = name.split('/')[0].split(':')[0]
  if base not in tfds.list_builders():
    raise ValueError(f'Unknown dataset {name!r}. Valid: digits, folder:/path/to/images '
                     f'(<split>/<label>/*.jpg), or a TFDS name such as {", ".join(KNOWN_TFDS)}.')
  builder = tfds.builder(name, data_dir=config.get('data_dir') or None)
  builder.download_and_prepare()
  features = builder.info.features
  shape = tuple(features['image'].shape)
  num_classes = features['label'].num_classes
  big = shape[0] is None or shape[0] > 64
  size = size or (224 if big else shape[0])
  c = shape[2] or 3
  splits = {k: v.num_examples for k, v in builder.info.splits.items()} or _count_splits(
      name, config.get('data_dir') or None)
  if not splits:
    raise ValueError(f'TFDS dataset {name!r} has no readable splits.')
  order = (('validation', 'val') if base.startswith(UNLABELED_TEST_SPLIT) else
           ('test', 'validation', 'val'))
  train_split, eval_split = _pick_splits(config, splits, f'TFDS dataset {name!r}', order)
  mean, std = (IMAGENET_MEAN, IMAGENET_STD)
  augment = 'imagenet' if big else 'crop' if base in DIGIT_DATASETS else 'cifar'
  return DatasetInfo(name, 'tfds', num_classes, (size, size, c), splits, train_split, eval_split,
                     mean, std, augment, in_memory=not big,
                     class_names=tuple(getattr(features['label'], 'names', ()) or ()))


def _count_splits(name, data_dir) -> dict:
  """Split sizes by reading them (when the builder's metadata has none, e.g. mocked data)."""
  tf = _tf()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  sizes = {}
  for split in ('train', 'test', 'validation'):
    try:
      ds = tfds.load(name, split=split, data_dir=data_dir)
    except Exception:  # pylint: disable=broad-except
      continue
    n = int(ds.cardinality())
    sizes[split] = n if n >= 0 else int(ds.reduce(tf.constant(0, tf.int64), lambda c, _: c + 1))
  return sizes


def _moments(images):
  x = images.astype(np.float64) / 255.0
  return (tuple(float(v) for v in x.mean(axis=(0, 1, 2))),
          tuple(float(v) for v in x.std(axis=(0, 1, 2)) + 1e-3))


# ----------------------------------------------------------------------------- augmentation

CROP_PAD = 4
# A crop's draws: row offset, column offset (each in [0, 2 * CROP_PAD]) and a flip bit.
CROP_DRAW_RANGES = (2 * CROP_PAD + 1, 2 * CROP_PAD + 1, 2)
# Augmentations that run on whole batches of an in-memory split (per-example tf.data work
# costs more than the crop itself on 32x32 images: ~25k against ~80k images/s on two cores).
BATCHED_AUGMENTATIONS = ('cifar', 'crop', 'none')


def pad_crop_flip(images, draws, flip: bool = True):
  """CIFAR's augmentation for a batch: zero-pad by 4, take a random crop of the original size and,
  if ``flip``, mirror it left-right.

  Both are a gather: output pixel ``(i, j)`` of image ``b`` is padded pixel
  ``(r_b + i, c_b + j)``, or ``(r_b + i, c_b + W - 1 - j)`` when its flip bit is set.

  Args:
    images: tf [B, H, W, C].
    draws: tf int32 [B, 3]: row offset r, column offset c, flip bit (see CROP_DRAW_RANGES).
    flip: whether the flip bit is used ('cifar') or ignored ('crop': a flipped digit is
      another glyph).

  Returns:
    tf [B, H, W, C], the dtype of ``images``.
  """
  tf = _tf()
  h, w = tf.shape(images)[1], tf.shape(images)[2]
  padded = tf.pad(images, [[0, 0], [CROP_PAD, CROP_PAD], [CROP_PAD, CROP_PAD], [0, 0]])
  rows = draws[:, 0:1] + tf.range(h)[None]
  cols = draws[:, 1:2] + tf.range(w)[None]
  if flip:
    cols = tf.where(draws[:, 2:3] > 0, draws[:, 1:2] + (w - 1) - tf.range(w)[None], cols)
  return tf.gather(tf.gather(padded, rows, axis=1, batch_dims=1), cols, axis=2, batch_dims=1)


MAX_SEED = 2**43  # seeds are combined as seed * 1_000_003 + epoch in int64


def crop_draws(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """int32 [N, 3]: every example's crop draws for one epoch of a batched split, row = example
  index, so an example's crop depends on (seed, epoch, index) only: not on the batch size, the
  process count, or where a resumed run started."""
  rng = np.random.default_rng([seed, epoch, 1])  # [seed, epoch] is the epoch's permutation
  return rng.integers(0, CROP_DRAW_RANGES, (num_examples, 3)).astype(np.int32)


def _augment_fn(kind: str, image_shape, train: bool):
  """Returns ``f(image uint8 [H,W,C], seed int32[2]) -> float32 image in [0, 1]``."""
  tf = _tf()
  h, w, c = image_shape

  def fit(image):  # the model's size: resized only if the image has another
    shape = tf.shape(image)
    return tf.cond(tf.logical_and(shape[0] == h, shape[1] == w),
                   lambda: tf.cast(image, tf.float32),
                   lambda: tf.image.resize(image, (h, w), antialias=True))

  def cifar(image, seed, flip=True):  # one example of pad_crop_flip, its draws from its seed
    draws = tf.random.stateless_uniform([3], seed, 0, 2**30, tf.int32) % CROP_DRAW_RANGES
    return pad_crop_flip(fit(image)[None], draws[None], flip)[0]

  def inception_crop(image, seed):
    s1, s2 = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), tf.zeros([0, 0, 4]), seed=s1, area_range=(0.08, 1.0),
        aspect_ratio_range=(3 / 4, 4 / 3), min_object_covered=0.1, use_image_if_no_bounding_boxes=True)
    image = tf.slice(image, begin, crop)
    image = tf.image.resize(image, (h, w), antialias=True)
    return tf.image.stateless_random_flip_left_right(image, seed=s2)

  def center_crop(image, _):
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = (h / 0.875) / tf.reduce_min(shape)  # resize shorter side to size/0.875, crop centre
    new = tf.cast(tf.round(shape * scale), tf.int32)
    image = tf.image.resize(image, new, antialias=True)
    return tf.image.resize_with_crop_or_pad(image, h, w)

  if kind == 'imagenet':
    fn = inception_crop if train else center_crop
  elif kind == 'cifar' and train:
    fn = cifar
  elif kind == 'crop' and train:  # pad-4 random crop, no flip (digits)
    fn = lambda image, seed: cifar(image, seed, flip=False)
  else:  # images as they are, resized only if they differ from the model's input size
    fn = lambda image, _: fit(image)

  def apply(image, seed):
    out = tf.cast(fn(image, seed), tf.float32) / 255.0
    return tf.ensure_shape(tf.clip_by_value(out, 0.0, 1.0), (h, w, c))
  return apply


# ----------------------------------------------------------------------------- iterators


class InMemorySource:
  """A split decoded into memory, shared by every epoch's pipeline."""

  def __init__(self, info: DatasetInfo, split: str, data_dir: Optional[str] = None):
    self.images, self.labels = _load_split_arrays(info, split, data_dir)
    if len(self.labels) == 0:
      raise ValueError(f'Dataset {info.name!r} split {split!r} is empty.')

  def fetch_fn(self, info: DatasetInfo):
    """tf: example index -> uint8 image [H, W, C]."""
    del info
    tf = _tf()
    images = tf.constant(self.images)
    return lambda index: tf.gather(images, index)


class FolderFiles:
  """A folder split's image files, read and decoded per example (folders of large images, e.g.
  ImageNet in ``<split>/<label>/*.JPEG`` layout), in the order :class:`InMemorySource` uses.

  Only the file names live in memory, so the in-memory path's exact per-epoch permutations and
  resume apply unchanged.
  """

  def __init__(self, info: DatasetInfo, split: str, data_dir: Optional[str] = None):
    del data_dir
    builder = _folder_builder(info.path)
    examples = builder._split_examples[split]  # pylint: disable=protected-access
    names = builder.info.features['label'].names
    paths = np.array([e.image_path for e in examples])
    labels = np.array([names.index(e.label) for e in examples], np.int32)
    order = _folder_order(paths)
    self.paths, self.labels = paths[order], labels[order]
    if len(self.labels) == 0:
      raise ValueError(f'Dataset {info.name!r} split {split!r} is empty.')

  def fetch_fn(self, info: DatasetInfo):
    tf = _tf()
    paths, channels = tf.constant(self.paths), info.image_shape[-1]
    return lambda index: tf.io.decode_image(tf.io.read_file(tf.gather(paths, index)),
                                            channels=channels, expand_animations=False)


def make_source(info: DatasetInfo, split: str, data_dir: Optional[str] = None):
  """What the iterators read ``split`` from: a :class:`InMemorySource`, a :class:`FolderFiles`,
  or None for a streamed TFDS set (read by name)."""
  if info.in_memory:
    return InMemorySource(info, split, data_dir)
  if info.kind == 'folder':
    return FolderFiles(info, split)
  return None


def _batched(info: DatasetInfo, source) -> bool:
  """Whether ``source``'s augmentation runs on whole batches: an in-memory split stored at the
  model's size (as :func:`_load_split_arrays` stores it) with a crop, flip or nothing to do."""
  return (isinstance(source, InMemorySource) and info.augment in BATCHED_AUGMENTATIONS
          and tuple(source.images.shape[1:]) == tuple(info.image_shape))


def _process_rows(rows: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
  """Each process's contiguous part of every row (a global batch) of an index matrix."""
  local = rows.shape[1] // process_count
  return rows[:, process_index * local:(process_index + 1) * local]


def train_iterator(info: DatasetInfo, *, global_batch_size: int, seed: int, start_step: int = 0,
                   source: Optional[InMemorySource] = None, data_dir: Optional[str] = None,
                   process_index: int = 0, process_count: int = 1,
                   prefetch: int = 2) -> Iterator[dict]:
  """Endless training batches (this process's part): {'image': float32 [b,H,W,C], 'label'}.

  Args:
    info: from :func:`get_info`.
    global_batch_size: examples per step over all processes.
    seed: data seed (permutations and augmentation), in [0, 2**43).
    start_step: first step to produce (resume).
    source: a pre-loaded :class:`InMemorySource` (loaded here if None and in memory).
    data_dir: TFDS data directory.
    process_index, process_count: this process's place among the processes.
    prefetch: batches prepared ahead.
  """
  tf = _tf()
  if not 0 <= seed < MAX_SEED:  # (seed * 1_000_003 + epoch) must fit TF's int64 seeds
    raise ValueError(f'The data seed must be in [0, 2**43); got {seed}.')
  n = info.num_examples[info.train_split]
  steps_per_epoch = n // global_batch_size
  if steps_per_epoch == 0:
    raise ValueError(f'batch_size={global_batch_size} exceeds the {n} training examples.')
  local = global_batch_size // process_count
  augment = _augment_fn(info.augment, info.image_shape, train=True)
  source = source or make_source(info, info.train_split, data_dir)
  if source is None:
    yield from _streaming_train(info, local, seed, start_step, data_dir, augment, prefetch,
                                process_index, process_count)
    return
  fetch = source.fetch_fn(info)
  labels = tf.constant(source.labels)
  batched = _batched(info, source)

  def load(index, epoch):
    seed_pair = tf.stack([tf.cast(seed, tf.int64) * 1_000_003 + tf.cast(epoch, tf.int64),
                          tf.cast(index, tf.int64)])
    return {'image': augment(fetch(index), seed_pair), 'label': tf.gather(labels, index)}

  def load_batch(index, draws):  # a whole batch: index [b], draws [b, 3]
    images = fetch(index)
    if info.augment != 'none':
      images = pad_crop_flip(images, draws, flip=info.augment == 'cifar')
    return {'image': tf.cast(images, tf.float32) / 255.0, 'label': tf.gather(labels, index)}

  epoch, offset = divmod(start_step, steps_per_epoch)
  while True:
    perm = np.random.default_rng([seed, epoch]).permutation(n)[:steps_per_epoch * global_batch_size]
    rows = _process_rows(perm.reshape(steps_per_epoch, global_batch_size), process_index,
                         process_count)[offset:].astype(np.int32)
    if batched:
      ds = tf.data.Dataset.from_tensor_slices((rows, crop_draws(seed, epoch, n)[rows]))
      ds = ds.map(load_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
      ds = tf.data.Dataset.from_tensor_slices(rows.reshape(-1))
      ds = ds.map(lambda i, e=epoch: load(i, e), num_parallel_calls=tf.data.AUTOTUNE,
                  deterministic=True)
      ds = ds.batch(local, drop_remainder=True)
    yield from ds.prefetch(prefetch).as_numpy_iterator()
    epoch, offset = epoch + 1, 0


def _streaming_train(info, local, seed, start_step, data_dir, augment, prefetch, process_index,
                     process_count):
  tf = _tf()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  split = tfds.split_for_jax_process(info.train_split, process_index=process_index,
                                     process_count=process_count, drop_remainder=True)
  # Every process holds n // P examples: an epoch is the loop's n // B steps of B / P each.
  steps_per_epoch = (info.num_examples[info.train_split] // process_count) // local
  process_seed = tf.constant(seed * 1_000_003 + process_index, tf.int64)

  def load(i, ex):
    # channels: grey images become RGB for an RGB model
    image = tf.io.decode_image(ex['image'], channels=info.image_shape[-1],
                               expand_animations=False)
    return {'image': augment(image, tf.stack([process_seed, i])),
            'label': tf.cast(ex['label'], tf.int32)}

  # One pipeline per epoch, its file order and shuffle keyed by (seed, epoch): a resumed run
  # re-reads at most the part of one epoch it already did, not every earlier epoch. Images stay
  # encoded until after that skip, and examples are numbered before it, so that a resumed run
  # augments example i as the uninterrupted run did.
  epoch, offset = divmod(start_step, steps_per_epoch)
  while True:
    epoch_seed = seed * 1_000_003 + epoch
    ds = tfds.load(info.name, split=split, data_dir=data_dir, shuffle_files=True,
                   read_config=tfds.ReadConfig(shuffle_seed=epoch_seed, interleave_cycle_length=16),
                   decoders={'image': tfds.decode.SkipDecoding()})
    ds = ds.shuffle(16 * local, seed=epoch_seed).take(steps_per_epoch * local)
    ds = ds.enumerate(start=epoch * steps_per_epoch * local).skip(offset * local)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(local, drop_remainder=True)
    yield from ds.prefetch(prefetch).as_numpy_iterator()
    epoch, offset = epoch + 1, 0


def eval_iterator(info: DatasetInfo, *, global_batch_size: int, split: Optional[str] = None,
                  source: Optional[InMemorySource] = None, data_dir: Optional[str] = None,
                  process_index: int = 0, process_count: int = 1,
                  max_examples: Optional[int] = None) -> Iterator[dict]:
  """One pass over an eval split in a fixed order, padded to whole batches.

  Yields this process's part of each global batch: {'image', 'label', 'mask'} where ``mask`` is
  1.0 for real examples and 0.0 for padding. Every process yields the same number of batches.
  """
  tf = _tf()
  split = split or info.eval_split
  n = info.num_examples[split] if max_examples is None else min(max_examples,
                                                                 info.num_examples[split])
  local = global_batch_size // process_count
  per_process = -(-n // process_count)
  num_batches = -(-per_process // local)
  transform = _augment_fn(info.augment, info.image_shape, train=False)
  h, w, c = info.image_shape
  source = source or make_source(info, split, data_dir)
  batched = _batched(info, source)
  if source is not None:
    idx = np.arange(process_index * per_process, min(n, (process_index + 1) * per_process))
    read = source.fetch_fn(info)  # example index (or a batch of them) -> image(s)
    ds = tf.data.Dataset.from_tensor_slices((idx.astype(np.int32), source.labels[idx]))
    if batched:  # nothing to do but convert, so whole batches at once
      transform = lambda images, _: tf.cast(images, tf.float32) / 255.0
      ds = ds.batch(local)
  else:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    # The first n examples of the split, dealt out evenly (4, 4, 3 for n = 11 and 3 processes),
    # like the in-memory path: not the first n / P examples of each process's share of the split.
    sub = tfds.split_for_jax_process(split if max_examples is None else f'{split}[:{n}]',
                                     process_index=process_index, process_count=process_count)
    ds = tfds.load(info.name, split=sub, data_dir=data_dir, shuffle_files=False)
    ds = ds.map(lambda ex: (ex['image'], ex['label']))
    read = lambda image: image
  ds = ds.map(lambda x, lb: (transform(read(x), tf.zeros([2], tf.int64)), tf.cast(lb, tf.int32)),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = (ds if batched else ds.batch(local)).prefetch(2)
  produced = 0
  for images, labels in ds.as_numpy_iterator():
    if produced == num_batches:
      break
    if labels.size and labels.min() < 0:  # scored as wrong, it would read as ~0% accuracy
      raise ValueError(f'{info.name} split {split!r} has unlabeled examples (label '
                       f'{int(labels.min())}); evaluate on a labeled split with '
                       f'config.eval_split (it has {sorted(info.num_examples)}).')
    pad = local - len(labels)
    yield {'image': np.pad(images, ((0, pad), (0, 0), (0, 0), (0, 0))),
           'label': np.pad(labels, (0, pad)),
           'mask': np.pad(np.ones(len(labels), np.float32), (0, pad))}
    produced += 1
  for _ in range(num_batches - produced):  # keep every process in step
    yield {'image': np.zeros((local, h, w, c), np.float32), 'label': np.zeros(local, np.int32),
           'mask': np.zeros(local, np.float32)}
