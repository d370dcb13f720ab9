"""Shared fixtures: the bundled digits data and the two models trained once per session.

Every fixture here is CPU-only and seeded; the data fixtures write into pytest's tmp dirs,
never into the repository. The helpers the tests call are in tests/helpers.py.
"""
import os

import pytest

from tests.helpers import MODELS, REPO_ROOT, SHARED_TRAIN_STEPS, describe, run_parallel
from tests.helpers import train_args


@pytest.fixture(scope='session')
def repo_root():
  return REPO_ROOT


@pytest.fixture(scope='session')
def digits_dir(tmp_path_factory):
  """A directory with the bundled digits data in the mnist format, written once per session:
  data_train.bin (1438 records) and data_test.bin (359 records)."""
  import dataset_input  # pylint: disable=g-import-not-at-top
  out = tmp_path_factory.mktemp('digits_dataset')
  dataset_input.convert_digits(str(out))
  return str(out)


@pytest.fixture(scope='session')
def digits_train(digits_dir):
  """Path of the digits training file (mnist format)."""
  return os.path.join(digits_dir, 'data_train.bin')


@pytest.fixture(scope='session')
def digits_test(digits_dir):
  """Path of the digits test file (mnist format)."""
  return os.path.join(digits_dir, 'data_test.bin')


@pytest.fixture(scope='session')
def shared_models(tmp_path_factory, digits_train):
  """{'CE': log_root, 'RCE': log_root}: ResNet-8s (num_residual_units=1) trained once per
  test session with the README's train.py command (both at once)."""
  root = tmp_path_factory.mktemp('shared_models_mnist')
  roots = {m: str(root / m) for m in MODELS}
  extra = ['--checkpoint_steps=%d' % SHARED_TRAIN_STEPS, '--test_every_steps=0',
           '--log_steps=100']
  procs = run_parallel([train_args(digits_train, roots[m], SHARED_TRAIN_STEPS, m == 'RCE',
                                   extra=extra) for m in MODELS])
  for proc in procs:
    assert proc.returncode == 0, describe(proc)
  return roots
