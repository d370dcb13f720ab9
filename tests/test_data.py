"""Tests of dataset_input.py: exact record round trips, the tf.data pipelines, bad-data errors,
the converters (IDX and digits) and importing the scripts without parsing argv."""
import gzip
import importlib
import os
import struct
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import describe, run_script  # pylint: disable=g-bad-import-order
import dataset_input  # pylint: disable=g-bad-import-order

tf.compat.v1.disable_eager_execution()
tf1 = tf.compat.v1

MNIST_RECORD_BYTES = 785 * 4
CIFAR_RECORD_BYTES = 3073


# ---- helpers -----------------------------------------------------------------------------


def read_all(dataset, pattern, batch_size, train, seed=None, max_batches=None):
  """Runs make_dataset in a fresh graph; returns the list of (images, labels) batches."""
  batches = []
  with tf.Graph().as_default():
    ds = dataset_input.make_dataset(dataset, pattern, batch_size, train=train, seed=seed)
    nxt = tf1.data.make_one_shot_iterator(ds).get_next()
    with tf1.Session() as sess:
      while max_batches is None or len(batches) < max_batches:
        try:
          batches.append(sess.run(nxt))
        except tf.errors.OutOfRangeError:
          break
  return batches


def one_hot(labels):
  return np.eye(10, dtype=np.float32)[np.asarray(labels)]


def mnist_arrays(n, seed):
  rng = np.random.RandomState(seed)
  pixels = rng.uniform(0.0, 1.0, size=(n, 28, 28)).astype(np.float32)
  pixels[:, 0, 0] = 0.0  # the range ends are valid pixels
  pixels[:, 0, 1] = 1.0
  labels = rng.randint(0, 10, size=n)
  return pixels, labels


def cifar_raw(n, seed, labels=None):
  """n raw CIFAR-10 records written by hand: label byte, then the R, G, B planes (32x32 each).

  Returns (file bytes, uint8 HWC images, labels)."""
  rng = np.random.RandomState(seed)
  labels = rng.randint(0, 10, size=n) if labels is None else np.asarray(labels)
  planes = rng.randint(0, 256, size=(n, 3, 32 * 32)).astype(np.uint8)
  planes[:, :, 0] = 0  # 0 and 255 must map to exactly -0.5 and 0.5
  planes[:, :, 1] = 255
  data = b''.join(bytes([int(labels[i])]) + planes[i, 0].tobytes() + planes[i, 1].tobytes()
                  + planes[i, 2].tobytes() for i in range(n))
  # The expected image, pixel by pixel from the plane layout (independent of the code's reshape).
  hwc = np.zeros((n, 32, 32, 3), np.uint8)
  for c in range(3):
    for h in range(32):
      hwc[:, h, :, c] = planes[:, c, h * 32:(h + 1) * 32]
  return data, hwc, labels


def write_bytes(path, data):
  with open(path, 'wb') as f:
    f.write(data)
  return str(path)


# ---- mnist records -----------------------------------------------------------------------


def test_mnist_records_round_trip_load_arrays(tmp_path):
  pixels, labels = mnist_arrays(7, seed=0)
  path = str(tmp_path / 'data.bin')
  dataset_input.write_mnist_records(path, pixels, labels)
  assert os.path.getsize(path) == 7 * MNIST_RECORD_BYTES
  raw = np.fromfile(path, '<f4').reshape(7, 785)
  np.testing.assert_array_equal(raw[:, 0], labels.astype(np.float32))
  np.testing.assert_array_equal(raw[:, 1:], pixels.reshape(7, 784))

  images, got_labels = dataset_input.load_arrays('mnist', path)
  assert images.dtype == np.float32 and images.shape == (7, 28, 28, 1)
  np.testing.assert_array_equal(images, pixels[..., None] - np.float32(0.5))
  np.testing.assert_array_equal(got_labels, labels)
  assert images.min() == -0.5 and images.max() == 0.5

  images3, labels3 = dataset_input.load_arrays('mnist', path, max_examples=3)
  np.testing.assert_array_equal(images3, images[:3])
  np.testing.assert_array_equal(labels3, labels[:3])


def test_mnist_eval_pipeline_exact_values_fixed_order_over_files(tmp_path):
  p1, l1 = mnist_arrays(4, seed=1)
  p2, l2 = mnist_arrays(3, seed=2)
  # Written in reverse name order: the pipeline must read the files sorted by name.
  dataset_input.write_mnist_records(str(tmp_path / 'part_b.bin'), p2, l2)
  dataset_input.write_mnist_records(str(tmp_path / 'part_a.bin'), p1, l1)
  pattern = str(tmp_path / 'part_*.bin')
  expected_images = np.concatenate([p1, p2])[..., None] - np.float32(0.5)
  expected_labels = one_hot(np.concatenate([l1, l2]))

  for _ in range(2):  # the same order every time
    batches = read_all('mnist', pattern, batch_size=3, train=False)
    assert [b[0].shape for b in batches] == [(3, 28, 28, 1), (3, 28, 28, 1), (1, 28, 28, 1)]
    assert all(b[1].shape[1:] == (10,) for b in batches)
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    assert images.dtype == np.float32 and labels.dtype == np.float32
    np.testing.assert_array_equal(images, expected_images)
    np.testing.assert_array_equal(labels, expected_labels)

  # load_arrays gives the same data in the same order.
  arr_images, arr_labels = dataset_input.load_arrays('mnist', pattern)
  np.testing.assert_array_equal(arr_images, expected_images)
  np.testing.assert_array_equal(one_hot(arr_labels), expected_labels)


# ---- cifar10 records ---------------------------------------------------------------------


def test_cifar10_records_channel_major_to_nhwc(tmp_path):
  data, hwc, labels = cifar_raw(5, seed=4)
  path = write_bytes(tmp_path / 'data_batch_1.bin', data)
  assert os.path.getsize(path) == 5 * CIFAR_RECORD_BYTES
  expected = hwc.astype(np.float32) / np.float32(255.0) - np.float32(0.5)

  images, got_labels = dataset_input.load_arrays('cifar10', path)
  assert images.dtype == np.float32 and images.shape == (5, 32, 32, 3)
  np.testing.assert_allclose(images, expected, rtol=0, atol=1e-7)
  np.testing.assert_array_equal(got_labels, labels)
  assert images.min() == -0.5 and images.max() == 0.5

  batches = read_all('cifar10', path, batch_size=2, train=False)
  assert [b[0].shape[0] for b in batches] == [2, 2, 1]
  tf_images = np.concatenate([b[0] for b in batches])
  np.testing.assert_allclose(tf_images, expected, rtol=0, atol=1e-7)
  np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), one_hot(labels))
  # A spot check against the plane layout itself: pixel (h=3, w=17) of channel G of record 2.
  raw = np.frombuffer(data, np.uint8).reshape(5, 3073)
  assert tf_images[2, 3, 17, 1] == pytest.approx(raw[2, 1 + 1024 + 3 * 32 + 17] / 255.0 - 0.5,
                                                 abs=1e-7)


def test_cifar10_train_augmentation_is_a_padded_crop_and_flip(tmp_path):
  data, hwc, _ = cifar_raw(3, seed=5, labels=[0, 1, 2])
  path = write_bytes(tmp_path / 'data_batch_1.bin', data)
  batches = read_all('cifar10', path, batch_size=4, train=True, seed=1, max_batches=8)
  assert len(batches) == 8
  padded = np.pad(hwc.astype(np.float32), [(0, 0), (2, 2), (2, 2), (0, 0)])
  identity_count = 0
  for images, labels in batches:
    assert images.shape == (4, 32, 32, 3) and labels.shape == (4, 10)
    assert images.min() >= -0.5 and images.max() <= 0.5
    for image, label in zip(images, labels):
      source = padded[int(np.argmax(label))]
      matches = []
      for dy in range(5):
        for dx in range(5):
          crop = source[dy:dy + 32, dx:dx + 32] / 255.0 - 0.5
          for flip in (False, True):
            candidate = crop[:, ::-1] if flip else crop
            if np.allclose(image, candidate, atol=1e-6):
              matches.append((dy, dx, flip))
      assert matches, 'augmented image is no padded crop (+flip) of its source record'
      identity_count += (2, 2, False) in matches
  assert identity_count < 32, 'no augmentation happened'


def test_train_pipeline_whole_shuffled_repeated_batches(tmp_path):
  n = 10
  pixels = np.repeat((np.arange(n, dtype=np.float32) / n)[:, None, None], 28, 1)
  pixels = np.repeat(pixels, 28, 2)  # record i: every pixel i/10 (identifies the record)
  labels = np.arange(n) % 10
  path = str(tmp_path / 'data_train.bin')
  dataset_input.write_mnist_records(path, pixels, labels)
  batches = read_all('mnist', path, batch_size=5, train=True, seed=3, max_batches=8)
  assert len(batches) == 8  # 40 images from 10 records: repeated
  ids = []
  for images, onehot in batches:
    assert images.shape == (5, 28, 28, 1) and onehot.shape == (5, 10)  # whole batches
    record = np.rint((images[:, 0, 0, 0] + 0.5) * n).astype(int)
    np.testing.assert_array_equal(np.argmax(onehot, 1), labels[record])
    np.testing.assert_array_equal(images, pixels[record][..., None] - np.float32(0.5))
    ids.extend(record.tolist())
  epochs = [ids[i:i + n] for i in range(0, len(ids), n)]
  for epoch in epochs:
    assert sorted(epoch) == list(range(n))  # each pass is a permutation of the file
  assert any(epoch != list(range(n)) for epoch in epochs), 'not shuffled'
  assert len(set(tuple(e) for e in epochs)) > 1, 'not reshuffled between passes'


# ---- bad data ----------------------------------------------------------------------------


def _bad_mnist(tmp_path, label=3.0, pixel=0.5, name='bad.bin'):
  pixels, labels = mnist_arrays(4, seed=6)
  labels = labels.astype(np.float32)
  labels[2] = label
  pixels[2, 10, 10] = pixel
  path = str(tmp_path / name)
  dataset_input.write_mnist_records(path, pixels, labels)
  return path


BAD_CASES = {
    'no_match': lambda d: ('mnist', str(d / 'nothing_here_*.bin'), 'no data file matches'),
    'cifar_as_mnist': lambda d: (
        'mnist', write_bytes(d / 'data_batch_1.bin', cifar_raw(2, seed=7)[0]),
        'not a whole number'),
    'mnist_label_10': lambda d: ('mnist', _bad_mnist(d, label=10.0), 'outside 0..9'),
    'mnist_label_negative': lambda d: ('mnist', _bad_mnist(d, label=-1.0), 'outside 0..9'),
    'mnist_label_fraction': lambda d: ('mnist', _bad_mnist(d, label=2.5), 'outside 0..9'),
    'cifar_label_200': lambda d: (
        'cifar10', write_bytes(d / 'data_batch_1.bin', cifar_raw(2, seed=8, labels=[1, 200])[0]),
        'outside 0..9'),
    'mnist_nan_pixel': lambda d: ('mnist', _bad_mnist(d, pixel=np.nan), 'non-finite'),
    'mnist_inf_pixel': lambda d: ('mnist', _bad_mnist(d, pixel=np.inf), 'non-finite'),
    'mnist_pixel_above_1': lambda d: ('mnist', _bad_mnist(d, pixel=1.5), 'outside [0, 1]'),
    'mnist_pixel_below_0': lambda d: ('mnist', _bad_mnist(d, pixel=-0.01), 'outside [0, 1]'),
    'mnist_pixels_0_255': lambda d: ('mnist', _bad_mnist(d, pixel=255.0), 'outside [0, 1]'),
    'empty_file': lambda d: ('mnist', write_bytes(d / 'empty.bin', b''), 'is empty'),
}


@pytest.mark.parametrize('case', sorted(BAD_CASES))
def test_bad_data_gives_clear_error(tmp_path, case):
  dataset, path, problem = BAD_CASES[case](tmp_path)
  for load in (lambda: dataset_input.validate_files(dataset, path),
               lambda: dataset_input.load_arrays(dataset, path),
               lambda: dataset_input.make_dataset(dataset, path, 2, train=False),
               lambda: dataset_input.make_dataset(dataset, path, 2, train=True)):
    with tf.Graph().as_default():
      with pytest.raises(dataset_input.DataError) as err:
        load()
    message = str(err.value)
    assert problem in message
    assert path in message  # names the file (or the pattern that matched nothing)


def test_bad_file_among_good_ones_is_named(tmp_path):
  pixels, labels = mnist_arrays(3, seed=9)
  dataset_input.write_mnist_records(str(tmp_path / 'a.bin'), pixels, labels)
  bad = _bad_mnist(tmp_path, pixel=2.0, name='b.bin')
  with pytest.raises(dataset_input.DataError, match='record 2'):
    dataset_input.load_arrays('mnist', str(tmp_path / '*.bin'))
  with pytest.raises(dataset_input.DataError) as err:
    dataset_input.validate_files('mnist', str(tmp_path / '*.bin'))
  assert bad in str(err.value) and 'a.bin' not in str(err.value)


def test_unknown_dataset_is_a_data_error(tmp_path):
  pixels, labels = mnist_arrays(2, seed=10)
  path = str(tmp_path / 'data.bin')
  dataset_input.write_mnist_records(path, pixels, labels)
  for call in (lambda: dataset_input.get_spec('svhn'),
               lambda: dataset_input.validate_files('svhn', path),
               lambda: dataset_input.load_arrays('svhn', path),
               lambda: dataset_input.make_dataset('svhn', path, 2, train=False)):
    with pytest.raises(dataset_input.DataError) as err:
      call()
    assert 'svhn' in str(err.value)
    assert 'mnist' in str(err.value) and 'cifar10' in str(err.value)


def test_train_cli_rejects_cifar_file_as_mnist_before_training(tmp_path):
  cifar = write_bytes(tmp_path / 'data_batch_1.bin', cifar_raw(3, seed=11)[0])
  log_root = tmp_path / 'm'
  proc = run_script([
      'train.py', '--train_data_path=%s' % cifar, '--log_root=%s' % log_root,
      '--train_dir=%s' % (log_root / 'train'), '--dataset=mnist', '--num_gpus=1',
      '--num_residual_units=1', '--mode=train', '--Optimizer=mom', '--total_steps=5',
      '--RCE_train=True'], timeout=120)
  assert proc.returncode != 0, describe(proc)
  assert 'error:' in proc.stderr and cifar in proc.stderr, describe(proc)
  assert 'not a whole number' in proc.stderr, describe(proc)
  assert 'parameters:' not in proc.stdout, describe(proc)  # stopped before building the model
  assert not log_root.exists() or not any(log_root.rglob('*')), list(log_root.rglob('*'))


# ---- converters --------------------------------------------------------------------------


def _idx_bytes(array):
  array = np.asarray(array, np.uint8)
  header = struct.pack('>HBB', 0, 0x08, array.ndim) + struct.pack('>' + 'I' * array.ndim,
                                                                  *array.shape)
  return header + array.tobytes()


def test_mnist_idx_converter_round_trip(tmp_path):
  rng = np.random.RandomState(12)
  train_images = rng.randint(0, 256, size=(6, 28, 28)).astype(np.uint8)
  train_images[0, 0, :2] = [0, 255]
  train_labels = np.array([0, 9, 3, 3, 7, 1], np.uint8)
  test_images = rng.randint(0, 256, size=(4, 28, 28)).astype(np.uint8)
  test_labels = np.array([5, 2, 8, 0], np.uint8)
  idx_dir = tmp_path / 'idx'
  idx_dir.mkdir()
  with gzip.open(str(idx_dir / 'train-images-idx3-ubyte.gz'), 'wb') as f:
    f.write(_idx_bytes(train_images))
  with gzip.open(str(idx_dir / 'train-labels-idx1-ubyte.gz'), 'wb') as f:
    f.write(_idx_bytes(train_labels))
  write_bytes(idx_dir / 't10k-images-idx3-ubyte', _idx_bytes(test_images))
  write_bytes(idx_dir / 't10k-labels-idx1-ubyte', _idx_bytes(test_labels))
  out_dir = tmp_path / 'out'

  proc = run_script(['dataset_input.py', '--convert=mnist_idx', '--idx_dir=%s' % idx_dir,
                     '--out_dir=%s' % out_dir], timeout=120)
  assert proc.returncode == 0, describe(proc)
  for name, images, labels in (('data_train.bin', train_images, train_labels),
                               ('data_test.bin', test_images, test_labels)):
    path = str(out_dir / name)
    assert os.path.getsize(path) == len(labels) * MNIST_RECORD_BYTES
    raw = np.fromfile(path, '<f4').reshape(-1, 785)
    np.testing.assert_array_equal(raw[:, 1:], (images.reshape(-1, 784) / 255.0).astype(np.float32))
    got_images, got_labels = dataset_input.load_arrays('mnist', path)
    np.testing.assert_array_equal(got_labels, labels.astype(np.int64))
    expected = (images[..., None] / 255.0).astype(np.float32) - np.float32(0.5)
    np.testing.assert_array_equal(got_images, expected)


IDX_NAMES = {
    'train-images': 'train-images-idx3-ubyte', 'train-labels': 'train-labels-idx1-ubyte',
    't10k-images': 't10k-images-idx3-ubyte', 't10k-labels': 't10k-labels-idx1-ubyte'}


def _good_idx_arrays():
  rng = np.random.RandomState(14)
  return {'train-images': rng.randint(0, 256, size=(5, 28, 28)).astype(np.uint8),
          'train-labels': np.array([0, 9, 4, 4, 1], np.uint8),
          't10k-images': rng.randint(0, 256, size=(3, 28, 28)).astype(np.uint8),
          't10k-labels': np.array([7, 2, 0], np.uint8)}


class RawBytes(bytes):
  """File bytes written as given, even under a .gz name (a corrupt gzip file)."""


def _write_idx_dir(idx_dir, contents=None, gz=('train-images', 't10k-labels')):
  """Writes the four MNIST IDX files into `idx_dir`, the keys in `gz` gzipped under a .gz name.

  Args:
    idx_dir: a pathlib folder (created if missing).
    contents: {key: the file's uncompressed bytes} replacing good small arrays; a RawBytes
      value is written as is (no gzip); 'directory' makes a folder of that name; None leaves
      the file out.
    gz: the keys written gzipped.

  Returns:
    {key: path} of the files written.
  """
  idx_dir.mkdir(exist_ok=True)
  contents = contents or {}
  paths = {}
  for key, array in _good_idx_arrays().items():
    data = contents[key] if key in contents else _idx_bytes(array)
    if data is None:
      continue
    path = idx_dir / (IDX_NAMES[key] + ('.gz' if key in gz else ''))
    if isinstance(data, str) and data == 'directory':
      path.mkdir()
    elif key in gz and not isinstance(data, RawBytes):
      with gzip.open(str(path), 'wb') as f:
        f.write(data)
    else:
      write_bytes(path, bytes(data))
    paths[key] = str(path)
  return paths


def _idx_header(ndim, dims, dtype_code=0x08):
  return struct.pack('>HBB', 0, dtype_code, ndim) + struct.pack('>%dI' % len(dims), *dims)


_TEST_IMAGES = _good_idx_arrays()['t10k-images']
_GOOD_TRAIN_LABELS_GZ = gzip.compress(_idx_bytes(_good_idx_arrays()['train-labels']))

# case -> (the bad file's key, its bytes ('directory': a folder of that name; None: missing),
#          the words that must be in the message). Most break a t10k file: the train files
#          are good and read first, yet data_train.bin must not be written.
BAD_IDX_CASES = {
    'gz_not_gzip': ('train-images', RawBytes(_idx_bytes(_good_idx_arrays()['train-images'])),
                    'not a valid gzip file'),
    'gz_truncated': ('t10k-labels', RawBytes(gzip.compress(
        _idx_bytes(_good_idx_arrays()['t10k-labels']))[:-12]), 'not a valid gzip file'),
    'gz_bad_deflate_data': ('t10k-labels', RawBytes(_GOOD_TRAIN_LABELS_GZ[:10] + b'\xff' * 30),
                   'not a valid gzip file'),
    'header_under_4_bytes': ('t10k-images', b'\x00\x00\x08', 'too short to be an IDX file'),
    'empty_file': ('t10k-images', b'', 'too short to be an IDX file'),
    'dims_cut_short': ('t10k-images', _idx_header(3, (3, 28)) + b'\x00\x00', 'header cut short'),
    'wrong_dtype_code': ('t10k-images', _idx_header(3, (3, 28, 28), dtype_code=0x0D)
                         + _TEST_IMAGES.tobytes(), 'not an unsigned-byte IDX file'),
    'wrong_magic': ('t10k-labels', b'\x12\x34\x08\x01' + struct.pack('>I', 3) + b'\x01' * 3,
                    'not an unsigned-byte IDX file'),
    'body_too_short': ('t10k-images', _idx_bytes(_TEST_IMAGES)[:-5], 'its header declares'),
    'body_too_long': ('t10k-labels', _idx_bytes(np.array([7, 2, 0], np.uint8)) + b'\x01',
                      'its header declares'),
    'images_not_28x28': ('t10k-images', _idx_bytes(np.zeros((3, 27, 28), np.uint8)),
                         'expected N x 28 x 28'),
    'images_2d': ('t10k-images', _idx_bytes(np.zeros((3, 784), np.uint8)),
                  'expected N x 28 x 28'),
    'no_images': ('t10k-images', _idx_bytes(np.zeros((0, 28, 28), np.uint8)), 'no images'),
    'labels_2d': ('t10k-labels', _idx_bytes(np.zeros((3, 1), np.uint8)), 'expected 1-D'),
    'count_mismatch': ('t10k-labels', _idx_bytes(np.array([7, 2], np.uint8)),
                       'holds 3 images but'),
    'label_10': ('t10k-labels', _idx_bytes(np.array([7, 10, 255], np.uint8)),
                 'label 1 is 10, outside 0..9 (2 bad labels)'),
    'train_label_10': ('train-labels', _idx_bytes(np.array([0, 9, 4, 10, 1], np.uint8)),
                       'label 3 is 10, outside 0..9 (1 bad labels)'),
    'missing_t10k_labels': ('t10k-labels', None, 'no t10k-labels-idx1-ubyte[.gz] file'),
    'directory_as_file': ('t10k-images', 'directory', 'is a directory'),
}


@pytest.mark.parametrize('out_exists', [False, True], ids=['new_out_dir', 'old_out_dir'])
@pytest.mark.parametrize('case', sorted(BAD_IDX_CASES))
def test_mnist_idx_converter_checks_all_inputs_before_writing(tmp_path, case, out_exists):
  key, data, problem = BAD_IDX_CASES[case]
  paths = _write_idx_dir(tmp_path / 'idx', {key: data})
  out_dir = tmp_path / 'out'
  old = b'old records'
  if out_exists:  # files from an earlier run are left exactly as they were
    out_dir.mkdir()
    write_bytes(out_dir / 'data_train.bin', old)
  with pytest.raises(dataset_input.DataError) as err:
    dataset_input.convert_mnist_idx(str(tmp_path / 'idx'), str(out_dir))
  message = str(err.value)
  assert problem in message, message
  assert paths.get(key, str(tmp_path / 'idx')) in message, message  # names the file
  assert '\n' not in message
  if out_exists:
    assert sorted(p.name for p in out_dir.iterdir()) == ['data_train.bin']
    assert (out_dir / 'data_train.bin').read_bytes() == old
  else:
    assert not out_dir.exists(), list(out_dir.rglob('*'))


def test_mnist_idx_count_mismatch_names_both_files(tmp_path):
  paths = _write_idx_dir(tmp_path / 'idx', {'t10k-labels': _idx_bytes(np.array([7], np.uint8))})
  with pytest.raises(dataset_input.DataError) as err:
    dataset_input.convert_mnist_idx(str(tmp_path / 'idx'), str(tmp_path / 'out'))
  assert paths['t10k-images'] in str(err.value) and paths['t10k-labels'] in str(err.value)
  assert 'holds 3 images' in str(err.value) and 'holds 1 labels' in str(err.value)


def test_mnist_idx_gzipped_file_without_gz_name_gets_a_hint(tmp_path):
  gz = gzip.compress(_idx_bytes(_TEST_IMAGES))
  paths = _write_idx_dir(tmp_path / 'idx', {'t10k-images': gz}, gz=())
  with pytest.raises(dataset_input.DataError) as err:
    dataset_input.convert_mnist_idx(str(tmp_path / 'idx'), str(tmp_path / 'out'))
  assert paths['t10k-images'] in str(err.value)
  assert 'name it t10k-images-idx3-ubyte.gz' in str(err.value)
  assert not (tmp_path / 'out').exists()


def test_mnist_idx_unreadable_file_is_a_data_error(tmp_path, monkeypatch):
  paths = _write_idx_dir(tmp_path / 'idx')
  real_open = open

  def fake_open(path, *args, **kwargs):
    if str(path) == paths['t10k-labels']:
      raise PermissionError(13, 'Permission denied', str(path))
    return real_open(path, *args, **kwargs)

  monkeypatch.setattr(dataset_input, 'open', fake_open, raising=False)
  with pytest.raises(dataset_input.DataError) as err:
    dataset_input.convert_mnist_idx(str(tmp_path / 'idx'), str(tmp_path / 'out'))
  assert str(err.value) == '%s: cannot read the file (Permission denied)' % paths['t10k-labels']
  assert not (tmp_path / 'out').exists()


def test_mnist_idx_converter_bad_idx_dir_and_out_dir(tmp_path):
  with pytest.raises(dataset_input.DataError, match='no such directory'):
    dataset_input.convert_mnist_idx(str(tmp_path / 'nowhere'), str(tmp_path / 'out'))
  _write_idx_dir(tmp_path / 'idx')
  out_file = write_bytes(tmp_path / 'out_file', b'x')
  with pytest.raises(dataset_input.DataError) as err:
    dataset_input.convert_mnist_idx(str(tmp_path / 'idx'), out_file)
  assert out_file in str(err.value) and 'not a directory' in str(err.value)
  assert not (tmp_path / 'out').exists()


def test_mnist_idx_converter_in_process_exact_bytes(tmp_path):
  arrays = _good_idx_arrays()
  _write_idx_dir(tmp_path / 'idx')
  out_dir = tmp_path / 'new' / 'out'
  dataset_input.convert_mnist_idx(str(tmp_path / 'idx'), str(out_dir))
  assert sorted(p.name for p in out_dir.iterdir()) == ['data_test.bin', 'data_train.bin']
  for name, prefix in (('data_train.bin', 'train'), ('data_test.bin', 't10k')):
    images, labels = arrays[prefix + '-images'], arrays[prefix + '-labels']
    expected = np.concatenate(
        [labels.astype('<f4')[:, None],
         (images.reshape(len(labels), 784) / 255.0).astype('<f4')], axis=1).tobytes()
    assert (out_dir / name).read_bytes() == expected


def test_directory_as_data_file_is_rejected(tmp_path):
  folder = tmp_path / 'some_dir'
  folder.mkdir()
  pixels, labels = mnist_arrays(2, seed=15)
  dataset_input.write_mnist_records(str(tmp_path / 'a.bin'), pixels, labels)
  for pattern in (str(folder), str(tmp_path / '*')):  # the folder alone, or among good files
    for call in (lambda: dataset_input.validate_files('mnist', pattern),
                 lambda: dataset_input.load_arrays('mnist', pattern),
                 lambda: dataset_input.make_dataset('mnist', pattern, 2, train=False)):
      with tf.Graph().as_default():
        with pytest.raises(dataset_input.DataError) as err:
          call()
      assert str(err.value) == '%s is a directory, not a data file' % folder


def test_unreadable_data_file_is_a_data_error(tmp_path, monkeypatch):
  pixels, labels = mnist_arrays(2, seed=16)
  path = str(tmp_path / 'data.bin')
  dataset_input.write_mnist_records(path, pixels, labels)
  real_open = open

  def fake_open(name, *args, **kwargs):
    if str(name) == path:
      raise PermissionError(13, 'Permission denied', str(name))
    return real_open(name, *args, **kwargs)

  monkeypatch.setattr(dataset_input, 'open', fake_open, raising=False)
  with pytest.raises(dataset_input.DataError) as err:
    dataset_input.validate_files('mnist', path)
  assert str(err.value) == '%s: cannot read the file (Permission denied)' % path


def test_mnist_idx_converter_cli_corrupt_gzip_one_line_error(tmp_path):
  paths = _write_idx_dir(tmp_path / 'idx', {
      't10k-labels': RawBytes(b'this is not gzip data at all')})
  out_dir = tmp_path / 'out'
  proc = run_script(['dataset_input.py', '--convert=mnist_idx',
                     '--idx_dir=%s' % (tmp_path / 'idx'), '--out_dir=%s' % out_dir], timeout=120)
  assert proc.returncode != 0, describe(proc)
  assert 'Traceback' not in proc.stderr, describe(proc)
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1, describe(proc)
  assert paths['t10k-labels'] in errors[0] and 'not a valid gzip file' in errors[0], errors
  assert not out_dir.exists() or not list(out_dir.rglob('*.bin')), list(out_dir.rglob('*'))


def test_digits_converter_cli(tmp_path, digits_dir):
  out_dir = tmp_path / 'digits'
  proc = run_script(['dataset_input.py', '--convert=digits', '--out_dir=%s' % out_dir],
                    timeout=120)
  assert proc.returncode == 0, describe(proc)
  for name, count in (('data_train.bin', 1438), ('data_test.bin', 359)):
    path = str(out_dir / name)
    assert os.path.getsize(path) == count * MNIST_RECORD_BYTES
    images, labels = dataset_input.load_arrays('mnist', path)
    assert images.shape == (count, 28, 28, 1)
    assert images.min() >= -0.5 and images.max() <= 0.5 and images.max() > 0.0
    assert set(labels.tolist()) == set(range(10))
    # Deterministic: the same bytes as the session fixture wrote in-process.
    with open(path, 'rb') as a, open(os.path.join(digits_dir, name), 'rb') as b:
      assert a.read() == b.read()


def test_written_data_files_get_ordinary_permissions(tmp_path):
  """Regression: io_utils.atomic_write_bytes writes through tempfile.mkstemp, which creates
  mode 0600; data and result files must get a plain open()'s 0666 & ~umask instead."""
  pixels, labels = mnist_arrays(2, seed=13)
  path = str(tmp_path / 'data.bin')
  dataset_input.write_mnist_records(path, pixels, labels)
  umask = os.umask(0)
  os.umask(umask)
  mode = os.stat(path).st_mode & 0o777
  assert mode == 0o666 & ~umask, 'written with mode %o, expected %o' % (mode, 0o666 & ~umask)


# ---- the scripts import without parsing the command line ---------------------------------


def test_scripts_import_without_parsing_argv(monkeypatch):
  monkeypatch.setattr(sys, 'argv', ['pytest', '--no_such_flag=1', 'positional'])
  for name in ('train', 'test_nor'):
    sys.modules.pop(name, None)  # import afresh under the bogus argv
  train = importlib.import_module('train')
  test_nor = importlib.import_module('test_nor')
  importlib.import_module('dataset_input')
  train.define_flags()
  test_nor.define_flags()
  train.define_flags()  # again: still no DuplicateFlagError
  test_nor.define_flags()
  flags = train.FLAGS
  for name in ('dataset', 'mode', 'log_root', 'num_gpus', 'num_residual_units', 'Optimizer',
               'RCE_train', 'eval_data_path', 'train_data_path', 'train_dir', 'total_steps',
               'eval_dir', 'eval_batch_count', 'eval_once'):
    assert name in flags, name
  assert test_nor.FLAGS is flags
  assert sys.argv == ['pytest', '--no_such_flag=1', 'positional']


def test_scripts_import_in_a_fresh_process_and_parse_together():
  code = '\n'.join([
      'import sys',
      "sys.argv = ['x', '--no_such_flag=1']",
      'import train, test_nor, dataset_input',
      'train.define_flags(); test_nor.define_flags()',
      'assert not train.FLAGS.is_parsed()',
      "train.FLAGS(['x', '--dataset=cifar10', '--Optimizer=adam', '--RCE_train=True',",
      "             '--eval_once', '--total_steps=7'])",
      'f = train.FLAGS',
      "assert (f.dataset, f.Optimizer, f.RCE_train, f.eval_once, f.total_steps) == "
      "('cifar10', 'adam', True, True, 7)",
      "print('ok')"])
  proc = run_script(['-c', code], timeout=120)
  assert proc.returncode == 0 and 'ok' in proc.stdout, describe(proc)
