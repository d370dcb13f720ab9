"""--dataset=cifar100 end to end on a synthetic file: 100 classes through the data checks,
training, test_nor, the attacks, kernel_para and detect (issue "any number of classes").
"""
import os

import numpy as np
import pytest

from tests.helpers import REPO_ROOT, describe, markdown_table, run_script  # pylint: disable=g-bad-import-order
import dataset_input  # pylint: disable=g-bad-import-order
from rce.results import result_files

K = 100


def cifar100_records(n, seed, fine=None):
  """n CIFAR-100 binary records: coarse label, fine label, then 1024 R, G, B bytes.

  Returns (record bytes, images [n, 32, 32, 3] uint8, fine labels [n]).
  """
  rng = np.random.RandomState(seed)
  fine = np.arange(n) % K if fine is None else np.asarray(fine)
  planes = rng.randint(0, 256, (n, 3, 32, 32)).astype(np.uint8)
  records = np.concatenate([(fine // 5)[:, None], fine[:, None], planes.reshape(n, -1)],
                           axis=1).astype(np.uint8)
  return records.tobytes(), planes.transpose(0, 2, 3, 1), fine


def test_cifar100_records_fine_labels_and_channel_major_pixels(tmp_path):
  data, hwc, fine = cifar100_records(7, seed=1, fine=[0, 99, 5, 42, 7, 63, 18])
  path = tmp_path / 'test.bin'
  path.write_bytes(data)
  images, labels = dataset_input.load_arrays('cifar100', str(path))
  np.testing.assert_array_equal(labels, fine)
  np.testing.assert_allclose(images, hwc / np.float32(255.0) - np.float32(0.5), atol=1e-7)
  assert dataset_input.get_spec('cifar100').num_classes == K


def test_cifar100_label_out_of_range_and_cifar10_file_are_rejected(tmp_path):
  data, _, _ = cifar100_records(3, seed=2)
  raw = bytearray(data)
  raw[1 * 3074 + 1] = 100  # record 1's fine label
  bad = tmp_path / 'bad.bin'
  bad.write_bytes(bytes(raw))
  with pytest.raises(dataset_input.DataError, match=r'record 1 has label 100, outside 0\.\.99'):
    dataset_input.validate_files('cifar100', str(bad))
  cifar10 = tmp_path / 'data_batch_1.bin'
  cifar10.write_bytes(np.zeros((5, 3073), np.uint8).tobytes())
  with pytest.raises(dataset_input.DataError, match='not a whole number of cifar100 records'):
    dataset_input.validate_files('cifar100', str(cifar10))


def test_cifar100_train_test_nor_attack_kernel_and_detect(tmp_path):
  data_dir = tmp_path / 'cifar100'
  data_dir.mkdir()
  train_bytes, _, _ = cifar100_records(400, seed=3)  # four images of every class
  test_bytes, _, _ = cifar100_records(60, seed=4)
  (data_dir / 'train.bin').write_bytes(train_bytes)
  (data_dir / 'test.bin').write_bytes(test_bytes)
  train, test = str(data_dir / 'train.bin'), str(data_dir / 'test.bin')
  log_root, results = str(tmp_path / 'model'), str(tmp_path / 'results')
  model = ['--dataset=cifar100', '--num_residual_units=1', '--RCE_train=True',
           '--log_root=%s' % log_root]

  def script(name, *flags):
    proc = run_script([os.path.join(REPO_ROOT, name)] + model + list(flags), cwd=str(tmp_path))
    assert proc.returncode == 0, describe(proc)
    return proc

  script('train.py', '--train_data_path=%s' % train, '--total_steps=4', '--batch_size=16',
         '--test_every_steps=2', '--test_batches=1')
  script('test_nor.py', '--eval_data_path=%s' % test, '--eval_once', '--eval_batch_count=1')
  clean = result_files.load_verified_summary(os.path.join(log_root, 'eval'),
                                             result_files.CLEAN_RESULT)
  assert clean['images'] == 60 and clean['checkpoint_step'] == 4
  attack = ['--eval_data_path=%s' % test, '--mode=attack', '--results_dir=%s' % results,
            '--eval_batch_count=1', '--attack_batch_size=30']
  script('test_adv.py', '--attack_method=fgsm', '--eps=0.1', *attack)
  script('test_adv.py', '--attack_method=carliniL2', '--cw_max_iterations=5',
         '--cw_binary_search_steps=1', '--cw_batch_size=30', *attack)
  script('test_adv.py', '--mode=kernel_para', '--train_data_path=%s' % train,
         '--results_dir=%s' % results, '--eval_batch_count=4', '--kernel_per_class=4',
         '--kernel_subset=2')
  detect = script('test_adv.py', '--mode=detect', '--results_dir=%s' % results,
                  '--eps_round=1')

  kernel, _ = result_files.load_kernel_params(result_files.kernel_dir('cifar100', results),
                                              True, 'cifar100')
  assert len(kernel['medians']) == K and set(kernel['point_labels']) == set(range(K))
  for name in ('fgsm', 'carliniL2'):
    directory = result_files.attack_dir(name, 'cifar100', True, results_dir=results)
    data = result_files.load_attack_round(directory, 0)
    assert data['labels_adv'].max() < K and data['labels_nor'].max() < K
    assert data['logits_adv'].shape == (30, 64)
  cw = result_files.attack_dir('carliniL2', 'cifar100', True, results_dir=results)
  labels = np.loadtxt(os.path.join(cw, 'labels_true')).astype(int)
  targets = __import__('rce.attacking.attack_runner', fromlist=['x']).random_targets(labels, 0, K)
  assert (targets != labels).all() and targets.max() < K and len(set(targets)) > 10
  _, rows = markdown_table(detect.stdout, '| Attack | Confidence')
  assert [r[0] for r in rows] == ['FGSM (eps 0.1)', 'C&W'], rows
