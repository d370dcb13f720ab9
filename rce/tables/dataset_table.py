"""The data set table, without TensorFlow: one small spec per data set.

The one place that knows each data set's image size, channels, classes, record layout,
preprocessing (pixel scale, augmentation), learning-rate schedule (the paper's) and file names.
`dataset_input` reads records with it; `reproduce.py` reads it without importing TensorFlow.
"""
import collections

import numpy as np

from rce.tables import errors

# The dataset table: the one place that knows image size, classes, record layout,
# preprocessing, the learning-rate schedule and the file names of each data set. A record is
# `header_values` values (the label at `label_index`), then the pixels.
DatasetSpec = collections.namedtuple('DatasetSpec', [
    'name', 'image_size', 'channels', 'num_classes', 'record_dtype', 'header_values',
    'label_index', 'record_values', 'pixel_scale', 'augment', 'lr_boundaries', 'lr_values',
    'train_files', 'test_file', 'adaptive_eps'])

# The L-inf budgets of the adaptive attacks (Table 6), in the [-0.5, 0.5] pixel range: MNIST's
# usual 0.1 / 0.2 / 0.3 (0.3 is Madry et al.'s), CIFAR's 2, 4 and 8 of 255.
_MNIST_ADAPTIVE_EPS = (0.1, 0.2, 0.3)
_CIFAR_ADAPTIVE_EPS = (2 / 255.0, 4 / 255.0, 8 / 255.0)

_CIFAR = dict(image_size=32, channels=3, record_dtype=np.dtype('u1'), pixel_scale=255.0,
              augment=True, lr_boundaries=(40000, 60000, 80000),
              lr_values=(0.1, 0.01, 0.001, 0.0001), adaptive_eps=_CIFAR_ADAPTIVE_EPS)

DATASETS = {
    'mnist': DatasetSpec(
        name='mnist', image_size=28, channels=1, num_classes=10, record_dtype=np.dtype('<f4'),
        header_values=1, label_index=0, record_values=1 + 28 * 28, pixel_scale=1.0,
        augment=False, lr_boundaries=(10000, 15000, 20000),
        lr_values=(0.1, 0.01, 0.001, 0.0001), train_files='data_train.bin',
        test_file='data_test.bin', adaptive_eps=_MNIST_ADAPTIVE_EPS),
    'cifar10': DatasetSpec(
        name='cifar10', num_classes=10, header_values=1, label_index=0,
        record_values=1 + 32 * 32 * 3, train_files='data_batch_*.bin',
        test_file='test_batch.bin', **_CIFAR),
    'cifar100': DatasetSpec(
        name='cifar100', num_classes=100, header_values=2, label_index=1,
        record_values=2 + 32 * 32 * 3, train_files='train.bin', test_file='test.bin',
        **_CIFAR),
}


DataError = errors.DataError


def get_spec(dataset):
  """Returns the DatasetSpec of `dataset`, or raises DataError listing the known names."""
  if dataset not in DATASETS:
    raise DataError('unknown --dataset=%r; expected one of: %s'
                    % (dataset, ', '.join(sorted(DATASETS))))
  return DATASETS[dataset]
