"""Input pipelines: determinism, exact resume, per-process slices, eval padding, bad folders."""

import dataclasses
import itertools

import ml_collections
import numpy as np
import pytest
from PIL import Image

from jaxrobust import data


def _cfg(**kw):
  c = ml_collections.ConfigDict({'dataset': 'digits', 'image_size': 0, 'augment': 'auto',
                                 'train_split': '', 'eval_split': '', 'data_dir': ''})
  for k, v in kw.items():
    c[k] = v
  return c


@pytest.fixture(scope='module')
def digits():
  info = data.get_info(_cfg())
  return info, data.InMemorySource(info, 'train')


def _take(it, n):
  return list(itertools.islice(it, n))


def test_digits_info(digits):
  info, source = digits
  assert info.num_classes == 10 and info.image_shape == (8, 8, 1)
  assert info.num_examples == {'train': 1437, 'test': 360}
  assert source.images.dtype == np.uint8 and source.images.shape == (1437, 8, 8, 1)


def test_train_batches_are_deterministic_and_resume_exactly(digits):
  info, source = digits
  kw = dict(global_batch_size=64, seed=3, source=source)
  full = _take(data.train_iterator(info, **kw), 30)  # crosses an epoch boundary (22 steps/epoch)
  again = _take(data.train_iterator(info, **kw), 30)
  resumed = _take(data.train_iterator(info, start_step=20, **kw), 10)
  for a, b in zip(full, again):
    np.testing.assert_array_equal(a['image'], b['image'])
  for a, b in zip(full[20:], resumed):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  assert full[0]['image'].dtype == np.float32
  assert 0.0 <= full[0]['image'].min() and full[0]['image'].max() <= 1.0
  other_seed = next(data.train_iterator(info, global_batch_size=64, seed=4, source=source))
  assert not np.array_equal(other_seed['label'], full[0]['label'])


def test_each_epoch_visits_every_example_once(digits):
  info, source = digits
  steps = 1437 // 64
  batches = _take(data.train_iterator(info, global_batch_size=64, seed=0, source=source), steps)
  images = np.concatenate([b['image'] for b in batches]).reshape(steps * 64, -1)
  uniq = np.unique(np.round(images * 255).astype(np.uint8), axis=0)
  assert len(uniq) >= steps * 64 - 5  # digits has a few duplicate images


def test_process_slices_concatenate_to_the_global_batch(digits):
  info, source = digits
  whole = next(data.train_iterator(info, global_batch_size=64, seed=1, source=source))
  parts = [next(data.train_iterator(info, global_batch_size=64, seed=1, source=source,
                                    process_index=p, process_count=2)) for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([p['label'] for p in parts]), whole['label'])
  np.testing.assert_array_equal(np.concatenate([p['image'] for p in parts]), whole['image'])


def test_eval_iterator_pads_and_masks_every_example_once(digits):
  info, _ = digits
  for processes in (1, 3):
    labels, count, n_batches = [], 0, set()
    for p in range(processes):
      batches = list(data.eval_iterator(info, global_batch_size=96, process_index=p,
                                        process_count=processes))
      n_batches.add(len(batches))
      for b in batches:
        assert b['image'].shape[0] == 96 // processes
        labels.append(b['label'][b['mask'] > 0])
        count += int(b['mask'].sum())
    assert count == 360 and len(n_batches) == 1  # every process yields as many batches
  source = data.InMemorySource(info, 'test')
  np.testing.assert_array_equal(np.concatenate(labels), source.labels)
  images = [b['image'][b['mask'] > 0] for b in data.eval_iterator(info, global_batch_size=96)]
  np.testing.assert_array_equal(np.concatenate(images), source.images.astype(np.float32) / 255)


def test_a_split_stored_at_another_size_is_resized_per_example(digits):
  info, source = digits  # 8x8 digits, stored at 10x10: the batched crop would keep 10x10
  big = data.InMemorySource.__new__(data.InMemorySource)
  big.images, big.labels = np.repeat(np.repeat(source.images, 2, 1), 2, 2)[:, :10, :10], source.labels
  for augment in ('cifar', 'none'):
    info_a = dataclasses.replace(info, augment=augment)
    batch = next(data.train_iterator(info_a, global_batch_size=16, seed=0, source=big))
    assert batch['image'].shape == (16, 8, 8, 1)
    assert next(data.eval_iterator(info_a, global_batch_size=16, source=big))['image'].shape == (
        16, 8, 8, 1)


def _pad_crop_flip_reference(images, draws, flip):
  padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
  h, w = images.shape[1:3]
  out = [p[r:r + h, c:c + w] for p, (r, c, _) in zip(padded, draws)]
  return np.stack([o[:, ::-1] if flip and f else o for o, f in zip(out, draws[:, 2])])


@pytest.mark.parametrize('flip', [True, False])
def test_pad_crop_flip_is_a_padded_crop_mirrored_by_its_flip_bit(flip):
  rng = np.random.default_rng(0)
  images = rng.integers(1, 256, (40, 6, 7, 2), dtype=np.uint8)  # H != W catches swapped axes
  draws = rng.integers(0, data.CROP_DRAW_RANGES, (40, 3)).astype(np.int32)
  got = data.pad_crop_flip(images, draws, flip=flip).numpy()
  np.testing.assert_array_equal(got, _pad_crop_flip_reference(images, draws, flip))
  assert {0, 8} <= set(draws[:, 0]) and {0, 1} == set(draws[:, 2])  # the extremes were drawn


def test_crop_draws_cover_every_offset_and_flip_uniformly():
  draws = data.crop_draws(0, 0, 90_000)
  for column, size in enumerate(data.CROP_DRAW_RANGES):
    counts = np.bincount(draws[:, column], minlength=size)
    assert len(counts) == size and np.all(np.abs(counts / 90_000 - 1 / size) < 0.01)
  assert not np.array_equal(draws, data.crop_draws(0, 1, 90_000))  # a new draw every epoch
  np.testing.assert_array_equal(draws[:5], data.crop_draws(0, 0, 5))  # row i: example i


def test_batched_cifar_augmentation_is_the_same_for_any_process_count(digits):
  info, source = digits
  info = dataclasses.replace(info, augment='cifar')
  whole = next(data.train_iterator(info, global_batch_size=64, seed=2, source=source,
                                   start_step=23))  # the second epoch
  parts = [next(data.train_iterator(info, global_batch_size=64, seed=2, source=source,
                                    start_step=23, process_index=p, process_count=2))
           for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([p['image'] for p in parts]), whole['image'])


def test_batched_cifar_augmentation_is_keyed_by_seed_epoch_and_example(digits):
  info, source = digits
  info = dataclasses.replace(info, augment='cifar')
  n, batch, seed = len(source.labels), 64, 5
  steps = n // batch
  it = data.train_iterator(info, global_batch_size=batch, seed=seed, source=source)
  got = _take(it, steps + 2)  # into the second epoch
  for step in (0, steps - 1, steps, steps + 1):
    epoch, b = divmod(step, steps)
    index = np.random.default_rng([seed, epoch]).permutation(n)[b * batch:(b + 1) * batch]
    want = _pad_crop_flip_reference(source.images[index],
                                    data.crop_draws(seed, epoch, n)[index], flip=True)
    np.testing.assert_array_equal(got[step]['image'], want.astype(np.float32) / 255)
    np.testing.assert_array_equal(got[step]['label'], source.labels[index])
  assert not np.array_equal(got[0]['image'],  # augmented: not the stored images
                            source.images[np.random.default_rng([seed, 0]).permutation(n)[:batch]]
                            .astype(np.float32) / 255)


def test_cifar_augmentation_crops_and_flips():
  aug = data._augment_fn('cifar', (8, 8, 3), train=True)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  image = tf.constant(np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3))
  outs = {aug(image, tf.constant([0, i], tf.int64)).numpy().tobytes() for i in range(20)}
  assert len(outs) > 5  # different crops/flips for different example seeds
  same = aug(image, tf.constant([0, 7], tf.int64)).numpy()
  np.testing.assert_array_equal(same, aug(image, tf.constant([0, 7], tf.int64)).numpy())
  # 'crop' (the digit datasets' default: a flipped digit is another glyph) is the same crop
  # without the flip: column order is kept inside every crop.
  crop = data._augment_fn('crop', (8, 8, 3), train=True)
  image = tf.constant(np.tile(np.arange(1, 9, dtype=np.uint8)[None, :, None], (8, 1, 3)))
  for i in range(20):
    out = crop(image, tf.constant([0, i], tf.int64)).numpy()[..., 0]
    row = out[np.argmax(out.sum(1))]  # a row of the image, not of the zero padding
    kept = row[row > 0]
    assert np.all(np.diff(kept) > 0) and len(kept) >= 4
  with tfds.testing.mock_data(num_examples=8):
    assert data.get_info(_cfg(dataset='mnist')).augment == 'crop'


def _make_folder(root, bad_file=False):
  rng = np.random.default_rng(0)
  for split, n in (('train', 6), ('test', 3)):
    for label in ('cat', 'dog'):
      d = root / split / label
      d.mkdir(parents=True)
      for i in range(n):
        Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(d / f'{i}.png')
  if bad_file:
    (root / 'train' / 'dog' / 'broken.jpg').write_bytes(b'not a jpeg at all')


def test_folder_dataset_resizes_and_sorts(tmp_path):
  _make_folder(tmp_path)
  info = data.get_info(_cfg(dataset=f'folder:{tmp_path}', image_size=16))
  assert info.class_names == ('cat', 'dog') and info.image_shape == (16, 16, 3)
  assert info.num_examples == {'train': 12, 'test': 6} and info.eval_split == 'test'
  # without image_size: small images keep their own size (the first file's longer side)
  assert data.get_info(_cfg(dataset=f'folder:{tmp_path}')).image_shape == (12, 12, 3)
  a = data.InMemorySource(info, 'train')
  b = data.InMemorySource(info, 'train')
  assert a.images.shape == (12, 16, 16, 3)
  np.testing.assert_array_equal(a.labels, b.labels)
  np.testing.assert_array_equal(np.bincount(a.labels), [6, 6])
  assert not np.array_equal(a.labels, np.sort(a.labels))  # not grouped by class
  np.testing.assert_array_equal(a.images, b.images)       # but always in the same order


def test_folder_errors(tmp_path):
  with pytest.raises(ValueError, match='does not exist'):
    data.get_info(_cfg(dataset=f'folder:{tmp_path}/nope'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match='no split directories'):
    data.get_info(_cfg(dataset=f'folder:{tmp_path}/empty'))
  _make_folder(tmp_path / 'bad', bad_file=True)
  info = data.get_info(_cfg(dataset=f'folder:{tmp_path}/bad'))
  with pytest.raises(ValueError, match='unreadable image file .*broken.jpg'):
    data.InMemorySource(info, 'train')


def test_unknown_tfds_name_lists_valid_ones():
  with pytest.raises(ValueError, match='Unknown dataset .*digits, folder:'):
    data.get_info(_cfg(dataset='cifar11'))


def test_tfds_cifar10_under_mock_data():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=40):
    info = data.get_info(_cfg(dataset='cifar10'))
    assert info.kind == 'tfds' and info.image_shape == (32, 32, 3) and info.num_classes == 10
    assert info.in_memory and info.augment == 'cifar'
    batch = next(data.train_iterator(info, global_batch_size=8, seed=0))
    assert batch['image'].shape == (8, 32, 32, 3) and batch['label'].shape == (8,)
    evals = list(data.eval_iterator(info, global_batch_size=16))
    assert sum(int(b['mask'].sum()) for b in evals) == info.num_examples[info.eval_split]


def test_streaming_training_data_resumes_where_it_stopped():
  # The streaming path (large TFDS sets) on mock CIFAR-10: a run resumed at step 2 (or 6, in the
  # second epoch) gets the batches 2, 3 (6, 7) of the uninterrupted run, same crops and flips.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=40):
    info = dataclasses.replace(data.get_info(_cfg(dataset='cifar10')), in_memory=False)
    uninterrupted = data.train_iterator(info, global_batch_size=8, seed=0)
    batches = [next(uninterrupted) for _ in range(8)]  # 5 steps per epoch: into the second
    for start in (2, 6):  # mid-epoch, and mid-way through the second epoch
      resumed = data.train_iterator(info, global_batch_size=8, seed=0, start_step=start)
      for want in batches[start:start + 2]:
        got = next(resumed)
        np.testing.assert_array_equal(got['label'], want['label'])
        np.testing.assert_array_equal(got['image'], want['image'])
    # the second epoch is another order of the same examples, not a repeat of the first
    assert not np.array_equal(np.concatenate([b['label'] for b in batches[:3]]),
                              np.concatenate([b['label'] for b in batches[5:8]]))


@pytest.fixture(scope='module')
def eleven_images(tmp_path_factory):
  """A real on-disk TFDS set (mock_data ignores split slicing and process slices): 11 test and
  12 train images of 8x8x3 with distinct pixels. Returns (info, data_dir)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (23, 8, 8, 3), dtype=np.uint8)
  split = lambda lo, hi: tf.data.Dataset.from_tensor_slices(
      {'image': images[lo:hi], 'label': np.arange(lo, hi) % 5})
  tfds.dataset_builders.TfDataBuilder(
      name='eleven_images', version='1.0.0', data_dir=data_dir,
      split_datasets={'test': split(0, 11), 'train': split(11, 23)},
      features=tfds.features.FeaturesDict({'image': tfds.features.Image(shape=(8, 8, 3)),
                                           'label': tfds.features.ClassLabel(num_classes=5)}),
  ).download_and_prepare()
  info = data.DatasetInfo('eleven_images', 'tfds', 5, (8, 8, 3), {'test': 11, 'train': 12},
                          'train', 'test', data.IMAGENET_MEAN, data.IMAGENET_STD, 'none',
                          in_memory=False)
  return info, data_dir


def test_streaming_eval_reads_exactly_the_first_max_examples(eleven_images):
  # Streaming (large TFDS sets) with max_examples over 3 processes reads the first 7 examples of
  # the split once each, in order, like the in-memory path; not the first 3 of each process's
  # share of the split.
  info, data_dir = eleven_images
  whole = next(data.eval_iterator(info, global_batch_size=11, data_dir=data_dir))
  assert whole['mask'].sum() == 11
  read, batches = [], set()
  for p in range(3):
    parts = list(data.eval_iterator(info, global_batch_size=6, max_examples=7,
                                    data_dir=data_dir, process_index=p, process_count=3))
    batches.add(len(parts))
    read += [b['image'][b['mask'] > 0] for b in parts]
  assert batches == {2}  # every process yields as many batches
  np.testing.assert_array_equal(np.concatenate(read), whole['image'][:7])


def test_streaming_training_processes_read_their_own_examples(eleven_images):
  # Two processes of a streaming run read disjoint halves of the training split, as they are told
  # (not as jax.process_index() of this one process says).
  info, data_dir = eleven_images
  seen = []
  for p in range(2):
    it = data.train_iterator(info, global_batch_size=4, seed=0, data_dir=data_dir,
                             process_index=p, process_count=2)
    seen.append({row.tobytes() for _ in range(12) for row in next(it)['image']})
  # each process draws only from its 6 examples; two readers of the whole split would overlap
  assert 0 < len(seen[0]) <= 6 and 0 < len(seen[1]) <= 6 and not seen[0] & seen[1]


def test_streaming_training_takes_every_allowed_seed(eleven_images):
  # Seeds are combined as seed * 1_000_003 + epoch in TF's int64: the largest allowed one still
  # streams, a larger one is refused by name (it had failed inside TF, hours into an ANT run).
  info, data_dir = eleven_images
  assert next(data.train_iterator(info, global_batch_size=4, seed=data.MAX_SEED - 1,
                                  data_dir=data_dir))['image'].shape == (4, 8, 8, 3)
  with pytest.raises(ValueError, match=r'data seed must be in \[0, 2\*\*43\); got'):
    next(data.train_iterator(info, global_batch_size=4, seed=data.MAX_SEED, data_dir=data_dir))


def test_no_split_stands_in_for_another_role():
  # A dataset with only a train split is not evaluated on it (nor trained on a test split)
  # unless the config names the split.
  with pytest.raises(ValueError, match=r"TFDS dataset 'x' has no evaluation split \(looked for "
                                       r"test, validation, val\); it has \['train'\]\. .*"
                                       r"config\.eval_split"):
    data._pick_splits(_cfg(), {'train': 10}, "TFDS dataset 'x'")
  with pytest.raises(ValueError, match=r"train_split='train' not found in TFDS dataset 'x'; it "
                                       r"has \['test'\]\. Name one with config\.train_split"):
    data._pick_splits(_cfg(), {'test': 10}, "TFDS dataset 'x'")
  assert data._pick_splits(_cfg(eval_split='train'), {'train': 10}, 'x') == ('train', 'train')
  assert data._pick_splits(_cfg(), {'train': 1, 'validation': 1}, 'x') == ('train', 'validation')


def test_the_plain_transform_resizes_only_images_of_another_size():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  fn = data._augment_fn('none', (8, 8, 3), train=False)
  image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
  np.testing.assert_array_equal(fn(tf.constant(image), tf.zeros([2], tf.int64)).numpy(),
                                image / np.float32(255))
  flat = np.broadcast_to(np.array([10, 128, 250], np.uint8), (16, 20, 3))  # one colour, 16x20
  small = fn(tf.constant(flat), tf.zeros([2], tf.int64)).numpy()
  assert small.shape == (8, 8, 3)
  np.testing.assert_allclose(small, np.broadcast_to(flat[:8, :8] / 255, (8, 8, 3)), atol=1e-5)


def test_a_folder_of_large_images_is_read_per_example(tmp_path):
  # Folders of images over 64 px (e.g. ImageNet as split/label/*.JPEG) are not decoded into memory;
  # they are read file by file in the order, epochs and process slices of the in-memory path.
  rng = np.random.default_rng(0)
  for split, n in (('train', 8), ('test', 5)):
    for label in ('cat', 'dog'):
      (tmp_path / split / label).mkdir(parents=True)
      for i in range(n):
        Image.fromarray(rng.integers(0, 255, (80, 90, 3), dtype=np.uint8)).save(
            tmp_path / split / label / f'{i}.jpg')
  assert data.get_info(_cfg(dataset=f'folder:{tmp_path}')).image_shape == (224, 224, 3)
  info = data.get_info(_cfg(dataset=f'folder:{tmp_path}', image_size=72))
  assert not info.in_memory and info.augment == 'imagenet' and info.image_shape == (72, 72, 3)
  files = data.make_source(info, 'test')
  assert isinstance(files, data.FolderFiles)
  in_memory = data.make_source(dataclasses.replace(info, in_memory=True), 'test')
  np.testing.assert_array_equal(files.labels, in_memory.labels)  # the same order
  evals = list(data.eval_iterator(info, global_batch_size=4))
  assert sum(int(b['mask'].sum()) for b in evals) == 10
  np.testing.assert_array_equal(np.concatenate([b['label'] for b in evals])[:10], files.labels)
  assert evals[0]['image'].shape == (4, 72, 72, 3)
  # training: the global batch is the same for 1 and 2 processes, and a resume is exact
  whole = data.train_iterator(info, global_batch_size=4, seed=3)
  batches = [next(whole) for _ in range(5)]  # past the 4 steps of an epoch
  halves = [data.train_iterator(info, global_batch_size=4, seed=3, process_index=p,
                                process_count=2) for p in range(2)]
  first = [next(h) for h in halves]
  np.testing.assert_array_equal(np.concatenate([f['image'] for f in first]), batches[0]['image'])
  resumed = next(data.train_iterator(info, global_batch_size=4, seed=3, start_step=4))
  np.testing.assert_array_equal(resumed['image'], batches[4]['image'])
  np.testing.assert_array_equal(resumed['label'], batches[4]['label'])


def test_imagenet_is_evaluated_on_its_labeled_validation_split():
  # TFDS imagenet2012 5.x has a 'test' split whose labels are all -1: read first, it would
  # report about 0% top-1 without a word.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=4):
    info = data.get_info(_cfg(dataset='imagenet2012'))
  assert set(info.num_examples) == {'train', 'validation', 'test'}
  assert info.eval_split == 'validation'


def test_an_unlabeled_eval_split_raises(tmp_path):
  _make_folder(tmp_path)
  info = data.get_info(_cfg(dataset=f'folder:{tmp_path}'))
  source = data.InMemorySource(info, 'test')
  source.labels = np.full_like(source.labels, -1)
  with pytest.raises(ValueError, match=r"split 'test' has unlabeled examples \(label -1\); "
                                       r"evaluate on a labeled split with config\.eval_split"):
    list(data.eval_iterator(info, global_batch_size=4, source=source))


def test_tf_holding_gpus_already_is_said_once(monkeypatch, caplog):
  # A notebook that used TensorFlow first: TF can no longer hide its GPUs, and it was silent
  # about it while it might hold the memory JAX needs.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def too_late(*args):
    raise RuntimeError('Visible devices cannot be modified after being initialized')

  monkeypatch.setattr(tf.config, 'set_visible_devices', too_late)
  monkeypatch.setattr(tf.config, 'list_logical_devices', lambda kind=None: ['/GPU:0'])
  with caplog.at_level('WARNING'):
    data._tf()
    data._tf()
  assert caplog.text.count('TensorFlow had already set up its GPUs') == 1
