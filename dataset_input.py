"""Binary-record input for mnist, cifar10 and cifar100, its validation, and the data converters.

Record formats (the README's "Data" section):
  mnist:    float32 little-endian records of 785 values: label (0..9), then 784 pixels in [0, 1].
  cifar10:  the standard CIFAR-10 binary version, 3073 bytes: label byte, then 1024 R, G, B bytes.
  cifar100: the standard CIFAR-100 binary version, 3074 bytes: coarse label byte (0..19), fine
            label byte (0..99, the label used), then 1024 R, G, B bytes.
Every image delivered by this module is NHWC float32 in [-0.5, 0.5]; labels are one-hot
[N, K], K the data set's number of classes.

Converters (write `data_train.bin` and `data_test.bin` in the mnist format):
  python dataset_input.py --convert=mnist_idx --idx_dir=DIR --out_dir=DIR
  python dataset_input.py --convert=digits --out_dir=DIR
"""
import glob
import gzip
import os
import struct
import zlib

import numpy as np
import tensorflow as tf

from rce.results import io_utils
from rce.tables import dataset_table
from rce.tables import perturbation

# The dataset table lives in dataset_table (TensorFlow-free); re-exported here.
DatasetSpec = dataset_table.DatasetSpec
DATASETS = dataset_table.DATASETS
DataError = dataset_table.DataError
get_spec = dataset_table.get_spec


def record_bytes(spec):
  return spec.record_values * spec.record_dtype.itemsize


def image_shape(spec):
  return (spec.image_size, spec.image_size, spec.channels)


def _expand(pattern):
  """Comma-separated glob patterns -> sorted file list; DataError when nothing matches."""
  files = []
  for part in [p for p in str(pattern).split(',') if p.strip()]:
    files.extend(sorted(glob.glob(part.strip())))
  if not files:
    raise DataError('no data file matches the pattern %r' % pattern)
  return files


def _os_reason(e):
  """One line for an OSError or a decompression error: its reason, without the path."""
  text = getattr(e, 'strerror', None) or str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__


def _read_records(path, spec):
  """Reads one file as a [num_records, record_values] array, checking its size.

  Raises:
    DataError: `path` is a directory, cannot be read, is empty, or its size is not a whole
      number of records.
  """
  if os.path.isdir(path):
    raise DataError('%s is a directory, not a data file' % path)
  rb = record_bytes(spec)
  try:
    size = os.path.getsize(path)
    if size == 0:
      raise DataError('%s: the file is empty (0 bytes): it holds no %s records'
                      % (path, spec.name))
    if size % rb:
      raise DataError(
          '%s: size %d bytes is not a whole number of %s records (%d bytes each); '
          'is it a %s file?' % (path, size, spec.name, rb, spec.name))
    with open(path, 'rb') as f:
      records = np.fromfile(f, dtype=spec.record_dtype)
  except OSError as e:
    raise DataError('%s: cannot read the file (%s)' % (path, _os_reason(e))) from e
  if records.size * spec.record_dtype.itemsize != size:
    raise DataError('%s: read %d bytes, expected %d (did the file change while being read?)'
                    % (path, records.size * spec.record_dtype.itemsize, size))
  return records.reshape(-1, spec.record_values)


def _check_records(path, spec, records):
  """Label range and (mnist) pixel range checks, vectorized over the file."""
  labels = records[:, spec.label_index]
  bad = np.flatnonzero(~np.isin(labels, np.arange(spec.num_classes)))
  if bad.size:
    raise DataError('%s: record %d has label %r, outside 0..%d (%d bad labels)'
                    % (path, bad[0], labels[bad[0]].item(), spec.num_classes - 1, bad.size))
  if spec.record_dtype.kind == 'f':
    pixels = records[:, spec.header_values:]
    finite = np.isfinite(pixels)
    if not finite.all():
      rec = np.flatnonzero(~finite.all(axis=1))[0]
      raise DataError('%s: record %d has non-finite pixels' % (path, rec))
    outside = (pixels < 0.0) | (pixels > 1.0)
    if outside.any():
      rec = np.flatnonzero(outside.any(axis=1))[0]
      raise DataError('%s: record %d has pixels outside [0, 1] (min %g, max %g)'
                      % (path, rec, pixels.min(), pixels.max()))


def validate_files(dataset, pattern):
  """Checks every file matching `pattern` before any graph runs; returns the file list.

  Raises:
    DataError: unknown dataset, no matching file, an empty file, a size that is not a whole
      number of records, a label outside 0..K-1, or mnist pixels outside [0, 1] or not finite.
  """
  spec = get_spec(dataset)
  files = _expand(pattern)
  for path in files:
    _check_records(path, spec, _read_records(path, spec))
  return files


def _records_to_images(spec, pixels):
  """Raw record pixels [N, values-1] -> NHWC float32 in [-0.5, 0.5] (numpy)."""
  n = pixels.shape[0]
  x = pixels.astype(np.float32)
  if spec.channels == 1:
    x = x.reshape(n, spec.image_size, spec.image_size, 1)
  else:  # channel-major on disk
    x = x.reshape(n, spec.channels, spec.image_size, spec.image_size).transpose(0, 2, 3, 1)
  return x / spec.pixel_scale + perturbation.IMAGE_MIN


def load_arrays(dataset, pattern, max_examples=None, files=None):
  """Validates and loads files in their fixed order (`files`: an already validated list).

  Returns:
    images: float32 [N, H, W, C] in [-0.5, 0.5]; labels: int64 [N] in 0..K-1.
  """
  spec = get_spec(dataset)
  images, labels = [], []
  for path in files or validate_files(dataset, pattern):
    records = _read_records(path, spec)
    images.append(_records_to_images(spec, records[:, spec.header_values:]))
    labels.append(records[:, spec.label_index].astype(np.int64))
  images, labels = np.concatenate(images), np.concatenate(labels)
  if max_examples is not None:
    images, labels = images[:max_examples], labels[:max_examples]
  return images, labels


def _parse_fn(spec, train):
  """Builds the tf.data map function: raw record -> (image [H,W,C] in [-0.5,0.5], one-hot)."""
  size, channels = spec.image_size, spec.channels
  tf_dtype = tf.float32 if spec.record_dtype.kind == 'f' else tf.uint8

  def parse(record):
    values = tf.io.decode_raw(record, tf_dtype, little_endian=True)
    label = tf.cast(values[spec.label_index], tf.int32)
    pixels = tf.cast(values[spec.header_values:], tf.float32)
    if channels == 1:
      image = tf.reshape(pixels, [size, size, 1])
    else:
      image = tf.transpose(tf.reshape(pixels, [channels, size, size]), [1, 2, 0])
    if train and spec.augment:
      image = tf.image.resize_with_crop_or_pad(image, size + 4, size + 4)
      image = tf.image.random_crop(image, [size, size, channels])
      image = tf.image.random_flip_left_right(image)
    image = image / spec.pixel_scale + perturbation.IMAGE_MIN
    return image, tf.one_hot(label, spec.num_classes, dtype=tf.float32)

  return parse


def make_dataset(dataset, pattern, batch_size, train, seed=None, files=None):
  """tf.data pipeline over the files matching `pattern` (validated first).

  Args:
    dataset: a name of DATASETS.
    pattern: glob pattern(s), comma-separated.
    batch_size: images per batch.
    train: True -> shuffled, repeated, augmented (cifar10), whole batches only;
      False -> one pass in the files' fixed order, last batch may be smaller.
    seed: shuffle/augmentation seed (training).
    files: an already validated file list (skips validation).

  Returns:
    A Dataset of (images [B,H,W,C] float32 in [-0.5, 0.5], labels [B,K] one-hot).
  """
  spec = get_spec(dataset)
  files = files or validate_files(dataset, pattern)
  ds = tf.data.FixedLengthRecordDataset(files, record_bytes(spec))
  if train:
    ds = ds.shuffle(10000, seed=seed, reshuffle_each_iteration=True).repeat()
  # Deterministic order even in training: a seeded run is reproducible.
  ds = ds.map(_parse_fn(spec, train), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(batch_size, drop_remainder=train)
  return ds.prefetch(tf.data.AUTOTUNE)


def default_test_pattern(dataset, train_pattern):
  """The test file beside the first training file (e.g. data_test.bin), or None if absent."""
  try:
    first = _expand(train_pattern)[0]
  except DataError:
    return None
  candidate = os.path.join(os.path.dirname(first), get_spec(dataset).test_file)
  return candidate if os.path.exists(candidate) else None


# ----------------------------------------------------------------------------- converters

def write_mnist_records(path, images, labels):
  """Writes mnist-format records atomically.

  Args:
    path: output file.
    images: [N, 28, 28] or [N, 784] floats in [0, 1].
    labels: [N] ints in 0..9.
  """
  images = np.asarray(images, np.float32).reshape(len(labels), -1)
  labels = np.asarray(labels)
  if images.shape[1] != 784:
    raise DataError('%s: images must have 784 pixels, got %d' % (path, images.shape[1]))
  records = np.concatenate([labels.astype(np.float32)[:, None], images], axis=1)
  io_utils.atomic_write_bytes(path, records.astype('<f4').tobytes())


_GZIP_MAGIC = b'\x1f\x8b'


def _read_idx_bytes(path):
  """All bytes of the file `path`, decompressed when its name ends in .gz.

  Raises:
    DataError: `path` is a directory, cannot be opened or read, or (.gz) is not a valid,
      complete gzip file.
  """
  if os.path.isdir(path):
    raise DataError('%s is a directory, not an IDX file' % path)
  try:
    with open(path, 'rb') as raw:
      if not path.endswith('.gz'):
        return raw.read()
      try:
        with gzip.GzipFile(fileobj=raw, mode='rb') as f:
          return f.read()
      except (EOFError, zlib.error, OSError) as e:
        if isinstance(e, OSError) and e.errno is not None:
          raise  # a real I/O error on the file, not a format problem
        reason = ('truncated: the compressed data ends early' if isinstance(e, EOFError)
                  else _os_reason(e))
        raise DataError('%s: not a valid gzip file (%s)' % (path, reason)) from e
  except OSError as e:
    raise DataError('%s: cannot read the file (%s)' % (path, _os_reason(e))) from e


def _shape_text(shape):
  return ' x '.join(str(d) for d in shape) if shape else 'a single value'


def read_idx(path):
  """Reads an IDX file (optionally gzipped) into a uint8 array of its declared shape.

  Raises:
    DataError: the file cannot be read, is not valid gzip (.gz names), has a header that is
      cut short or is not an unsigned-byte IDX header, or holds a number of values that does
      not match its header.
  """
  data = _read_idx_bytes(path)
  if len(data) < 4:
    raise DataError('%s: too short to be an IDX file (%d bytes; the header needs at least 4)'
                    % (path, len(data)))
  zero, dtype_code, ndim = struct.unpack('>HBB', data[:4])
  if zero != 0 or dtype_code != 0x08:
    hint = ''
    if data[:2] == _GZIP_MAGIC and not path.endswith('.gz'):
      hint = '; it looks gzipped: name it %s.gz' % os.path.basename(path)
    raise DataError('%s: not an unsigned-byte IDX file (magic %r%s)' % (path, data[:4], hint))
  header = 4 + 4 * ndim
  if len(data) < header:
    raise DataError('%s: IDX header cut short: %d dimensions need %d header bytes, the file '
                    'has %d' % (path, ndim, header, len(data)))
  dims = struct.unpack('>%dI' % ndim, data[4:header])
  declared = 1
  for d in dims:
    declared *= d
  if len(data) - header != declared:
    raise DataError('%s: holds %d values, its header declares %s (%d values)'
                    % (path, len(data) - header, _shape_text(dims), declared))
  return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def _find_idx(idx_dir, prefix, kind):
  """The path of `prefix`-`kind` (or `prefix`.`kind`), plain or .gz, in `idx_dir`.

  Raises:
    DataError: `idx_dir` is not a directory, or holds no such file.
  """
  if not os.path.isdir(idx_dir):
    raise DataError('%s: %s' % (idx_dir, 'not a directory' if os.path.exists(idx_dir)
                                else 'no such directory (the MNIST IDX folder)'))
  for suffix in ('', '.gz'):
    for sep in ('-', '.'):
      path = os.path.join(idx_dir, '%s%s%s%s' % (prefix, sep, kind, suffix))
      if os.path.exists(path):
        return path
  raise DataError('no %s-%s[.gz] file in %s' % (prefix, kind, idx_dir))


def _checked_idx_split(images_path, labels_path):
  """Reads and checks one split's IDX pair; returns (images [N, 28, 28], labels [N]) uint8.

  Raises:
    DataError: either file is unreadable or malformed (see read_idx), the images are not
      N x 28 x 28 with N > 0, the labels are not 1-D, the counts differ, or a label is
      outside 0..9.
  """
  images = read_idx(images_path)
  labels = read_idx(labels_path)
  if images.ndim != 3 or images.shape[1:] != (28, 28):
    raise DataError('%s: images are %s, expected N x 28 x 28'
                    % (images_path, _shape_text(images.shape)))
  if images.shape[0] == 0:
    raise DataError('%s: holds no images' % images_path)
  if labels.ndim != 1:
    raise DataError('%s: labels are %s, expected 1-D (one label per image)'
                    % (labels_path, _shape_text(labels.shape)))
  if labels.shape[0] != images.shape[0]:
    raise DataError('%s holds %d images but %s holds %d labels'
                    % (images_path, images.shape[0], labels_path, labels.shape[0]))
  bad = np.flatnonzero(labels >= DATASETS['mnist'].num_classes)  # uint8: never negative
  if bad.size:
    raise DataError('%s: label %d is %d, outside 0..9 (%d bad labels)'
                    % (labels_path, bad[0], labels[bad[0]], bad.size))
  return images, labels


def convert_mnist_idx(idx_dir, out_dir):
  """Standard MNIST IDX files in `idx_dir` -> data_train.bin / data_test.bin in `out_dir`.

  All four files (train-images, train-labels, t10k-images, t10k-labels; each plain or .gz)
  are found, read and checked before anything is written: on bad input neither output file
  is written and `out_dir` is not created. Each output file is written atomically.

  Raises:
    DataError: a missing, unreadable or malformed input file (the message names it), or an
      `out_dir` that exists but is not a directory.
  """
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise DataError('%s: exists and is not a directory (the output folder)' % out_dir)
  # Every file is located first (a missing one is reported before any reading), then all
  # are read and checked, and only then is anything written.
  splits = [(out_name, _find_idx(idx_dir, prefix + '-images', 'idx3-ubyte'),
             _find_idx(idx_dir, prefix + '-labels', 'idx1-ubyte'))
            for prefix, out_name in (('train', 'data_train.bin'), ('t10k', 'data_test.bin'))]
  arrays = [(out_name, _checked_idx_split(images_path, labels_path))
            for out_name, images_path, labels_path in splits]
  io_utils.makedirs(out_dir)
  for out_name, (images, labels) in arrays:
    write_mnist_records(os.path.join(out_dir, out_name), images / 255.0, labels)


def digits_arrays(test_fraction=0.2, seed=0):
  """scikit-learn's bundled digits, resized to 28x28 in [0, 1], split with a fixed seed.

  The 8x8 images are upsampled bilinearly to 20x20 and centred in 28x28, like MNIST's
  20x20 digit box. Returns (train_images, train_labels, test_images, test_labels).
  """
  from scipy import ndimage  # scipy ships with scikit-learn
  from sklearn.datasets import load_digits
  digits = load_digits()
  small = digits.images.astype(np.float64) / 16.0
  big = ndimage.zoom(small, (1, 20 / 8, 20 / 8), order=1)
  images = np.zeros((len(small), 28, 28), np.float32)
  images[:, 4:24, 4:24] = np.clip(big, 0.0, 1.0)
  order = np.random.RandomState(seed).permutation(len(images))
  n_test = int(round(len(images) * test_fraction))
  test, train = order[:n_test], order[n_test:]
  return images[train], digits.target[train], images[test], digits.target[test]


def convert_digits(out_dir):
  """Writes the bundled digits data set (train 1438, test 359) in the mnist format."""
  io_utils.makedirs(out_dir)
  x_tr, y_tr, x_te, y_te = digits_arrays()
  write_mnist_records(os.path.join(out_dir, 'data_train.bin'), x_tr, y_tr)
  write_mnist_records(os.path.join(out_dir, 'data_test.bin'), x_te, y_te)


def main(argv):
  del argv
  flags = tf.compat.v1.app.flags.FLAGS
  if flags.convert == 'mnist_idx':
    if not flags.idx_dir:
      raise DataError('--convert=mnist_idx needs --idx_dir')
    convert_mnist_idx(flags.idx_dir, flags.out_dir)
  else:
    convert_digits(flags.out_dir)
  for name in ('data_train.bin', 'data_test.bin'):
    path = os.path.join(flags.out_dir, name)
    print('wrote %s (%d records)'
          % (path, os.path.getsize(path) // record_bytes(DATASETS['mnist'])))


if __name__ == '__main__':
  from rce.flags import strict  # pylint: disable=g-import-not-at-top (the converter's only)
  _flags = strict.flags
  _flags.DEFINE_enum('convert', None, ['mnist_idx', 'digits'], 'Which converter to run.')
  _flags.DEFINE_string('idx_dir', '', 'Folder with the MNIST IDX files (for mnist_idx).')
  _flags.DEFINE_string('out_dir', None, 'Where data_train.bin and data_test.bin are written.')
  _flags.mark_flags_as_required(['convert', 'out_dir'])
  strict.run_strict(lambda: main(None))
