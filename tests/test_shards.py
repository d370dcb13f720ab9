"""Attack shards for a cluster: two shards merged equal the unsharded run; a missing,
incomplete or foreign shard is refused (issue "Paper scale": shards)."""
import os
import shutil

import numpy as np
import pytest

from tests.helpers import attack_args, describe, run_parallel, run_script  # pylint: disable=g-bad-import-order
from rce.results import result_files  # pylint: disable=g-bad-import-order

N = 40
CW = ['--cw_max_iterations=20', '--cw_binary_search_steps=2', '--cw_batch_size=20']


def _args(test_file, log_root, method, results, extra=()):
  flags = ['--results_dir=%s' % results] + (CW if method == 'carliniL2' else ['--eps=0.1'])
  return attack_args(test_file, log_root, True, method, 20, batches=2, extra=flags + list(extra))


@pytest.fixture(scope='module')
def runs(shared_models, digits_test, tmp_path_factory):
  """fgsm and carliniL2 on 40 images: unsharded in one folder, as 2 shards in another."""
  base = tmp_path_factory.mktemp('shards')
  whole, sharded = str(base / 'whole'), str(base / 'sharded')
  jobs = []
  for method in ('fgsm', 'carliniL2'):
    jobs.append(_args(digits_test, shared_models['RCE'], method, whole))
    for index in (0, 1):
      jobs.append(_args(digits_test, shared_models['RCE'], method, sharded,
                        ['--num_shards=2', '--shard_index=%d' % index]))
  for proc in run_parallel(jobs):
    assert proc.returncode == 0, describe(proc)
  return dict(whole=whole, sharded=sharded, base=str(base), models=shared_models,
              test=digits_test)


def _merge(runs, method, results, log_root=None):
  return run_script(_args(runs['test'], log_root or runs['models']['RCE'], method, results,
                          ['--mode=merge_shards', '--num_shards=2']))


@pytest.mark.parametrize('method', ['fgsm', 'carliniL2'])
def test_two_shards_merged_equal_the_unsharded_run(runs, method):
  proc = _merge(runs, method, runs['sharded'])
  assert proc.returncode == 0, describe(proc)
  whole = result_files.attack_dir(method, 'mnist', True, results_dir=runs['whole'])
  merged = result_files.attack_dir(method, 'mnist', True, results_dir=runs['sharded'])
  a, b = result_files.load_verified_summary(whole), result_files.load_verified_summary(merged)
  assert b['num_examples'] == N and len(b['merged_from']) == 2
  for name in result_files.TEXT_FILES + ('nor_img.npy', 'adv_img.npy'):
    load = np.load if name.endswith('.npy') else np.loadtxt
    x, y = load(os.path.join(whole, name)), load(os.path.join(merged, name))
    if name.startswith('labels'):
      np.testing.assert_array_equal(x, y, err_msg=name)
    else:
      np.testing.assert_allclose(x, y, atol=1e-5, err_msg=name)
  for key, value in a['attack_stats'].items():
    if isinstance(value, float):
      assert b['attack_stats'][key] == pytest.approx(value, abs=1e-6), key
    else:
      assert b['attack_stats'][key] == value, key
  for ra, rb in zip(a['rounds'], b['rounds']):
    assert rb == pytest.approx(ra, abs=1e-6)


def _copy(runs, name):
  dest = os.path.join(runs['base'], name)
  shutil.copytree(runs['sharded'], dest)
  return dest


def _shard(results, index):
  return os.path.join(result_files.attack_dir('fgsm', 'mnist', True, results_dir=results),
                      'shards', '%d_of_2' % index)


def test_a_missing_shard_is_refused(runs):
  results = _copy(runs, 'missing')
  shutil.rmtree(_shard(results, 1))
  proc = _merge(runs, 'fgsm', results)
  assert proc.returncode != 0 and 'shard 1 of 2 is missing' in proc.stderr, describe(proc)


def test_an_incomplete_shard_is_refused(runs):
  results = _copy(runs, 'incomplete')
  os.remove(os.path.join(_shard(results, 0), result_files.SUMMARY))
  proc = _merge(runs, 'fgsm', results)
  assert proc.returncode != 0 and 'incomplete' in proc.stderr, describe(proc)
  assert _shard(results, 0) in proc.stderr


def test_a_shard_of_another_checkpoint_is_refused(runs):
  results = _copy(runs, 'foreign')
  proc = run_script(_args(runs['test'], runs['models']['CE'], 'fgsm', results,
                          ['--num_shards=2', '--shard_index=1']))
  assert proc.returncode == 0, describe(proc)
  merged = _merge(runs, 'fgsm', results)
  assert merged.returncode != 0, describe(merged)
  assert 'made by checkpoint' in merged.stderr and _shard(results, 1) in merged.stderr


def test_a_shard_of_other_flags_is_refused(runs):
  results = _copy(runs, 'flags')
  proc = _merge(runs, 'fgsm', results)  # with --eps=0.1 as the shards
  assert proc.returncode == 0, describe(proc)
  other = run_script(attack_args(runs['test'], runs['models']['RCE'], True, 'fgsm', 20,
                                 batches=2, extra=['--results_dir=%s' % results, '--eps=0.2',
                                                   '--mode=merge_shards', '--num_shards=2']))
  assert other.returncode != 0 and '--eps=0.1' in other.stderr, describe(other)
