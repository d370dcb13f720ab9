"""Result provenance: interrupted rewrites, mixed files, and folders that do not belong together
are refused by the readers (issue "Results you can trust").

The result folders here are made in-process with result_files' own writers, from small
seeded arrays, so that each fault can be injected at an exact point of a save.
"""
import json
import os
import shutil

import numpy as np
import pytest

from rce.detection import detection
from rce.reports import detect_report
from rce.results import io_utils
from rce.results import provenance
from rce.results import result_files

N = 30


def _provenance(fingerprint='f' * 64, data_sha='d' * 64, model='RCE'):
  return provenance.record(
      {'name': model, 'checkpoint': '/models/%s/model.ckpt-200' % model, 'global_step': 200,
       'fingerprint': fingerprint, 'num_residual_units': 1, 'use_bottleneck': False},
      [{'path': '/data/data_test.bin', 'size': 1000, 'sha256': data_sha}], {'seed': 0})


def _arrays(seed, n=N):
  rng = np.random.RandomState(seed)
  labels = np.arange(n) % 10
  feats = rng.normal(size=(n, 64))
  return {'labels_true': labels, 'labels_nor': labels, 'labels_adv': (labels + 1 + seed) % 10,
          'confidence_nor': rng.uniform(0.5, 1, n), 'confidence_adv': rng.uniform(0.5, 1, n),
          'entropy_nor': rng.uniform(0, 2, n), 'entropy_adv': rng.uniform(0, 2, n),
          'logits_nor': feats, 'logits_adv': feats + 0.5, 'L2_distance': np.ones(n),
          'nor_img': np.zeros((n, 28, 28, 1), np.float32),
          'adv_img': np.full((1, n, 28, 28, 1), 0.1 * seed, np.float32)}


def _save_attack(results, model, seed, n=N, **prov):
  directory = result_files.attack_dir('carliniL2', 'mnist', model == 'RCE',
                                      results_dir=results)
  summary = {'attack': 'carliniL2', 'dataset': 'mnist', 'model': model, 'num_examples': n,
             'num_rounds': 1, 'eps': [None], 'rounds': [], 'attack_stats': {},
             'provenance': _provenance(model=model, **prov)}
  result_files.save_attack_results(directory, _arrays(seed, n), summary)
  return directory


def _save_kernels(results, fingerprints=None, data_shas=None):
  rng = np.random.RandomState(1)
  for model in ('CE', 'RCE'):
    feats, labels = rng.normal(size=(200, 64)), np.arange(200) % 10
    params = detection.kernel_params(feats, labels, model == 'RCE', 10, per_class=15,
                                         subset=10)
    prov = _provenance(fingerprint=(fingerprints or {}).get(model, 'f' * 64),
                       data_sha=(data_shas or {}).get(model, 't' * 64), model=model)
    result_files.save_kernel_params(result_files.kernel_dir('mnist', results),
                                    model == 'RCE', feats, labels, params,
                                    {'dataset': 'mnist', 'provenance': prov})


@pytest.fixture
def results(tmp_path):
  """A complete, consistent results folder: C&W for CE and RCE plus both kernels."""
  out = str(tmp_path / 'results')
  for seed, model in enumerate(('CE', 'RCE')):
    _save_attack(out, model, seed)
  _save_kernels(out)
  return out


def test_consistent_folders_give_a_table_and_a_detect_summary(results):
  text, per_attack = detect_report.detect(results, 'mnist')
  assert 'C&W' in text and set(per_attack['carliniL2']) == {'CE', 'RCE'}
  detect_dir = os.path.join(results, 'detect_mnist')
  summary = result_files.load_verified_summary(detect_dir)
  assert set(summary['files']) >= {'table2.md', 'table2.csv'}
  rce_dir = result_files.attack_dir('carliniL2', 'mnist', True, results_dir=results)
  assert summary['inputs']['attacks']['carliniL2']['RCE']['run_id'] == result_files.run_id(
      result_files.load_summary(rce_dir))


def test_every_file_of_a_summary_has_its_checksum(results):
  directory = result_files.attack_dir('carliniL2', 'mnist', True, results_dir=results)
  summary = result_files.load_verified_summary(directory)
  listed = set(summary['files'])
  assert listed == set(os.listdir(directory)) - {result_files.SUMMARY}
  for name, digest in summary['files'].items():
    assert io_utils.sha256_file(os.path.join(directory, name)) == digest, name


@pytest.mark.parametrize('fail_after', [0, 3, 10, 12])
def test_interrupted_rewrite_leaves_an_incomplete_folder_that_detect_refuses(
    results, monkeypatch, fail_after):
  """A save killed after `fail_after` files (12 = every file but the summary) of a rewrite."""
  calls = []
  real_write = io_utils.atomic_write_bytes

  def failing_write(path, data):
    if len(calls) == fail_after:
      raise KeyboardInterrupt('killed during the save')
    calls.append(path)
    return real_write(path, data)

  monkeypatch.setattr(io_utils, 'atomic_write_bytes', failing_write)
  with pytest.raises(KeyboardInterrupt):
    _save_attack(results, 'RCE', seed=5)
  monkeypatch.setattr(io_utils, 'atomic_write_bytes', real_write)
  directory = result_files.attack_dir('carliniL2', 'mnist', True, results_dir=results)
  assert not result_files.is_complete(directory)
  with pytest.raises(result_files.ResultsError) as err:
    detect_report.detect(results, 'mnist')
  assert directory in str(err.value) and 'incomplete' in str(err.value), str(err.value)


def test_stray_temporary_files_of_a_killed_write_are_cleaned_by_the_next_save(results):
  directory = result_files.attack_dir('carliniL2', 'mnist', True, results_dir=results)
  stray = os.path.join(directory, '.labels_adv.abc123.tmp')
  with open(stray, 'w') as f:
    f.write('half a file')
  _save_attack(results, 'RCE', seed=1)
  assert not os.path.exists(stray)


def test_a_file_copied_from_another_run_with_the_same_n_is_refused(results, tmp_path):
  other = str(tmp_path / 'other')
  other_dir = _save_attack(other, 'RCE', seed=7)
  directory = result_files.attack_dir('carliniL2', 'mnist', True, results_dir=results)
  shutil.copy(os.path.join(other_dir, 'labels_adv'), os.path.join(directory, 'labels_adv'))
  with pytest.raises(result_files.ResultsError) as err:
    detect_report.detect(results, 'mnist')
  message = str(err.value)
  assert directory in message and 'labels_adv' in message and 'checksum' in message, message


def test_a_changed_kernel_file_is_refused(results):
  kernel_dir = result_files.kernel_dir('mnist', results)
  path = os.path.join(kernel_dir, 'training_labels_CE')
  with open(path, 'a') as f:
    f.write('3\n')
  with pytest.raises(result_files.ResultsError) as err:
    detect_report.detect(results, 'mnist')
  assert 'training_labels_CE' in str(err.value) and kernel_dir in str(err.value)


def test_attack_of_another_checkpoint_than_the_kernel_is_refused(results):
  directory = _save_attack(results, 'RCE', seed=1, fingerprint='e' * 64)
  with pytest.raises(result_files.ResultsError) as err:
    detect_report.detect(results, 'mnist')
  message = str(err.value)
  assert directory in message and 'kernel_RCE.json' in message, message
  assert 'not the same RCE model' in message, message


def test_attacks_on_different_test_data_are_refused(results):
  directory = _save_attack(results, 'RCE', seed=1, data_sha='0' * 64)
  with pytest.raises(result_files.ResultsError) as err:
    detect_report.detect(results, 'mnist')
  assert 'other test data' in str(err.value) and directory in str(err.value)


def test_kernels_of_different_training_data_are_refused(results):
  _save_kernels(results, data_shas={'CE': '1' * 64, 'RCE': '2' * 64})
  with pytest.raises(result_files.ResultsError, match='different training data'):
    detect_report.detect(results, 'mnist')


def test_results_without_provenance_are_refused_as_an_older_version(results):
  directory = result_files.attack_dir('carliniL2', 'mnist', True, results_dir=results)
  path = os.path.join(directory, result_files.SUMMARY)
  with open(path) as f:
    summary = json.load(f)
  del summary['provenance'], summary['files']
  with open(path, 'w') as f:
    json.dump(summary, f)
  with pytest.raises(result_files.ResultsError, match='older version'):
    detect_report.detect(results, 'mnist')


def test_a_folder_of_the_other_model_is_refused(results):
  ce_dir = result_files.attack_dir('carliniL2', 'mnist', False, results_dir=results)
  rce_dir = result_files.attack_dir('carliniL2', 'mnist', True, results_dir=results)
  shutil.rmtree(rce_dir)
  shutil.copytree(ce_dir, rce_dir)
  with pytest.raises(result_files.ResultsError, match='of the CE model, not RCE'):
    detect_report.detect(results, 'mnist')


def test_white_box_attack_refuses_the_kernel_of_another_checkpoint(shared_models, digits_train,
                                                                   digits_test, tmp_path):
  """C&W-wb reads the kernel files: they must come from the checkpoint it attacks."""
  from tests.helpers import attack_args, describe, model_flags, run_script  # pylint: disable=g-import-not-at-top
  results = str(tmp_path / 'results')
  made = run_script(['test_adv.py', '--mode=kernel_para', '--train_data_path=%s' % digits_train,
                     '--results_dir=%s' % results, '--eval_batch_count=2',
                     '--kernel_per_class=5', '--kernel_subset=3']
                    + model_flags(shared_models['CE'], False))
  assert made.returncode == 0, describe(made)
  kernel_dir = result_files.kernel_dir('mnist', results)
  summary = result_files.load_verified_summary(kernel_dir, 'kernel_CE.json')
  assert summary['provenance']['model']['checkpoint'].startswith(shared_models['CE'])
  assert summary['provenance']['flags']['kernel_per_class'] == 5
  # the same architecture, another checkpoint: restorable, but not the kernel's model
  proc = run_script(attack_args(digits_test, shared_models['RCE'], False, 'carliniL2_specific',
                                5, extra=['--results_dir=%s' % results]))
  assert proc.returncode != 0, describe(proc)
  assert 'kernel_CE.json' in proc.stderr and shared_models['CE'] in proc.stderr, describe(proc)
  assert not os.path.exists(result_files.attack_dir('carliniL2_specific', 'mnist', False,
                                                    results_dir=results))


def test_t_sne_of_a_single_example_is_a_clear_error(tmp_path):
  import t_sne  # pylint: disable=g-import-not-at-top
  directory = _save_attack(str(tmp_path / 'results'), 'RCE', seed=9, n=1)
  with pytest.raises(result_files.ResultsError, match='t-SNE needs at least 2'):
    t_sne.panel(directory, 'RCE', 1, 500)
