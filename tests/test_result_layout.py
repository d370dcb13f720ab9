"""The result files' row layout (issue 13 item 6): the original's, read by its Matlab scripts.

The original's test_adv.py appended the normal rows (`*_nor`, `labels_true`) once per eps
round, and its `Matlab_scripts/auc_of_roc_RCE.m` reshapes them by rounds. Ours attacks one
fixed image set in every round and writes its normal rows once per round in the same layout.
The result folders here are made in-process with `save_attack_results` from small seeded
arrays.
"""
import json
import os

import numpy as np
import pytest

from rce.results import io_utils
from rce.results import provenance
from rce.results import result_files

N = 7
ROUNDS = (1, 3, 10)
IMAGE_SHAPE = (28, 28, 1)


def _provenance(model='RCE'):
  """The provenance of a hand-made result: one made-up model and data file."""
  return provenance.record(
      {'name': model, 'checkpoint': '/made/up/%s/model.ckpt-1' % model, 'global_step': 1,
       'fingerprint': 'f' * 64, 'num_residual_units': 1, 'use_bottleneck': False},
      [{'path': '/made/up/data_test.bin', 'size': 1, 'sha256': '0' * 64}], {'seed': 0})


def _arrays(rounds, n=N, seed=0):
  """Seeded result arrays as attack_runner.collect gives them: normal N rows, adv R*N rows."""
  rng = np.random.RandomState(seed)
  labels = rng.randint(0, 10, size=n)
  return {'labels_true': labels, 'labels_nor': (labels + (rng.rand(n) < 0.3)) % 10,
          'confidence_nor': rng.uniform(0.5, 1, n), 'entropy_nor': rng.uniform(0, 2, n),
          'logits_nor': rng.normal(size=(n, 64)),
          'labels_adv': rng.randint(0, 10, size=rounds * n),
          'confidence_adv': rng.uniform(0.1, 1, rounds * n),
          'entropy_adv': rng.uniform(0, 2, rounds * n),
          'logits_adv': rng.normal(size=(rounds * n, 64)),
          'L2_distance': rng.uniform(0, 3, rounds * n),
          'nor_img': rng.uniform(-0.5, 0.5, (n,) + IMAGE_SHAPE).astype(np.float32),
          'adv_img': rng.uniform(-0.5, 0.5, (rounds, n) + IMAGE_SHAPE).astype(np.float32)}


def _summary(rounds, n=N):
  eps = [round(0.02 * (k + 1), 2) for k in range(rounds)] if rounds > 1 else [None]
  return {'attack': 'bim' if rounds > 1 else 'carliniL2', 'dataset': 'mnist', 'model': 'RCE',
          'num_examples': n, 'num_rounds': rounds, 'eps': eps, 'rounds': [],
          'attack_stats': {}, 'provenance': _provenance()}


def _save(tmp_path, rounds, n=N, seed=0):
  directory = str(tmp_path / ('r%d' % rounds) / 'RCE')
  arrays = _arrays(rounds, n, seed)
  result_files.save_attack_results(directory, arrays, _summary(rounds, n))
  return directory, arrays


def _rewrite(directory, name, values, fmt):
  """Replaces a text file and records its new checksum: a folder a writer could have made."""
  digest = io_utils.atomic_savetxt(os.path.join(directory, name), values, fmt=fmt)
  summary = result_files.load_summary(directory)
  summary['files'][name] = digest
  io_utils.atomic_write_json(os.path.join(directory, result_files.SUMMARY), summary)
  result_files.load_verified_summary(directory)  # only the layout is wrong, not a checksum


def _fmt(name):
  return '%d' if name.startswith('labels') else '%.8e'


# A numpy port of the original's Matlab reading (Matlab_scripts/auc_of_roc_RCE.m), 1-based:
#   labels_RCE_nor_all=reshape(load([...,'/RCE/labels_nor']),num_per_eps,[]);
#   labels_RCE_nor=labels_RCE_nor_all(:,eps_round);
#   id_range=(1+num_per_eps*(eps_round-1)):(num_per_eps+num_per_eps*(eps_round-1));
#   logits_RCE_nor=logits_RCE_nor_all(id_range(...),:);
# (the same for labels_adv, labels_true, confidence_*, entropy_* and logits_adv).


def _matlab_load(directory, name):
  """Matlab's `load` of a numeric text file: one matrix row per line (a column for 1 value)."""
  return np.loadtxt(os.path.join(directory, name), ndmin=2)


def _matlab_reshape(x, rows):
  """Matlab's `reshape(x, rows, [])`: column-major, the element count must divide."""
  assert x.size % rows == 0, 'Matlab: product of known dimensions not divisible'
  return np.reshape(x, (rows, -1), order='F')


def _matlab_column(matrix, eps_round):
  """Matlab's `matrix(:, eps_round)` (1-based; an index out of range is an error there)."""
  assert 1 <= eps_round <= matrix.shape[1], 'Matlab: index exceeds matrix dimensions'
  return matrix[:, eps_round - 1]


def _matlab_id_range(num_per_eps, eps_round):
  """`(1+num_per_eps*(eps_round-1)):(num_per_eps+num_per_eps*(eps_round-1))`, 1-based."""
  return np.arange(1 + num_per_eps * (eps_round - 1),
                   num_per_eps + num_per_eps * (eps_round - 1) + 1)


def matlab_round(directory, num_per_eps, eps_round):
  """The arrays of one round as auc_of_roc_RCE.m reads them (before its selection)."""
  out = {}
  for name in result_files.TEXT_FILES:
    values = _matlab_load(directory, name)
    if name.startswith('logits'):
      rows = _matlab_id_range(num_per_eps, eps_round)
      assert rows[-1] <= len(values), 'Matlab: index exceeds matrix dimensions'
      out[name] = values[rows - 1, :]
    else:  # L2_distance is not read by the script; it has the same layout
      out[name] = _matlab_column(_matlab_reshape(values, num_per_eps), eps_round)
  return out


@pytest.mark.parametrize('rounds', ROUNDS)
def test_every_text_file_has_rounds_times_n_rows_round_major(tmp_path, rounds):
  directory, arrays = _save(tmp_path, rounds)
  for name in result_files.TEXT_FILES:
    values = np.loadtxt(os.path.join(directory, name),
                        ndmin=2 if name.startswith('logits') else 1)
    assert len(values) == rounds * N, (name, values.shape)
    if name in result_files.REPEATED_FILES:  # the N given rows, once per round
      expected = np.concatenate([arrays[name]] * rounds, axis=0)
    else:
      expected = arrays[name]
    np.testing.assert_allclose(values, expected, rtol=1e-7, err_msg=name)
  for name in ('entropy_nor', 'confidence_nor', 'logits_nor', 'labels_nor', 'labels_true'):
    assert name in result_files.REPEATED_FILES
  assert np.load(os.path.join(directory, 'nor_img.npy')).shape == (N,) + IMAGE_SHAPE
  assert np.load(os.path.join(directory, 'adv_img.npy')).shape == (rounds, N) + IMAGE_SHAPE
  summary = result_files.load_verified_summary(directory)
  assert set(summary['files']) == set(result_files.TEXT_FILES) | {'nor_img.npy',
                                                                  'adv_img.npy'}


@pytest.mark.parametrize('rounds', ROUNDS)
def test_matlab_reading_recovers_every_round_as_load_attack_round(tmp_path, rounds):
  directory, arrays = _save(tmp_path, rounds, seed=rounds)
  for index in range(rounds):
    ours = result_files.load_attack_round(directory, index)
    theirs = matlab_round(directory, N, index + 1)
    for name in result_files.TEXT_FILES:
      assert ours[name].shape == theirs[name].shape, (name, index)
      np.testing.assert_array_equal(ours[name], theirs[name], err_msg='%s round %d'
                                    % (name, index + 1))
    # and both are the arrays that were saved: the fixed normal set, the round's adv rows
    for name in result_files.REPEATED_FILES:
      np.testing.assert_allclose(ours[name], arrays[name], rtol=1e-7, err_msg=name)
    for name in result_files.ADV_FILES:
      np.testing.assert_allclose(ours[name], arrays[name][index * N:(index + 1) * N],
                                 rtol=1e-7, err_msg=name)
  with pytest.raises(AssertionError, match='index exceeds'):
    matlab_round(directory, N, rounds + 1)


@pytest.mark.parametrize('name', result_files.REPEATED_FILES)
def test_a_folder_whose_normal_rounds_differ_is_refused(tmp_path, name):
  directory, arrays = _save(tmp_path, 3)
  values = np.concatenate([arrays[name]] * 3, axis=0)
  values[N + 2] = values[N + 2] + 1  # round 2 holds another image (as the original's would)
  _rewrite(directory, name, values, _fmt(name))
  with pytest.raises(result_files.ResultsError) as err:
    result_files.load_attack_round(directory, 0)
  message = str(err.value)
  assert directory in message and name in message, message
  assert 'round 2 differ' in message, message


@pytest.mark.parametrize('name', ('entropy_nor', 'logits_nor', 'labels_true'))
def test_normal_files_written_once_are_refused_naming_rows_and_expected(tmp_path, name):
  directory, arrays = _save(tmp_path, 3)
  _rewrite(directory, name, arrays[name], _fmt(name))
  with pytest.raises(result_files.ResultsError) as err:
    result_files.load_attack_round(directory, 1)
  message = str(err.value)
  assert directory in message and name in message, message
  assert '%d rows' % N in message and 'expected %d' % (3 * N) in message, message
  assert 'once per eps round' in message, message


def test_truncated_adv_file_is_still_named(tmp_path):
  directory, arrays = _save(tmp_path, 3)
  _rewrite(directory, 'confidence_adv', arrays['confidence_adv'][:-1], '%.8e')
  with pytest.raises(result_files.ResultsError, match=r'confidence_adv has %d rows, '
                     r'expected %d' % (3 * N - 1, 3 * N)):
    result_files.load_attack_round(directory, 0)


@pytest.mark.parametrize('name', ('labels_true', 'logits_nor', 'entropy_adv'))
def test_save_refuses_arrays_with_other_rows_and_writes_nothing(tmp_path, name):
  arrays = _arrays(3)
  arrays[name] = np.concatenate([arrays[name]] * 2, axis=0)
  directory = str(tmp_path / 'out')
  with pytest.raises(ValueError, match='%s has' % name):
    result_files.save_attack_results(directory, arrays, _summary(3))
  assert not os.path.exists(directory)


def test_summary_records_the_checksums_of_the_repeated_files(tmp_path):
  directory, _ = _save(tmp_path, 3)
  with open(os.path.join(directory, result_files.SUMMARY)) as f:
    summary = json.load(f)
  for name in result_files.TEXT_FILES + ('nor_img.npy', 'adv_img.npy'):
    assert summary['files'][name] == io_utils.sha256_file(os.path.join(directory, name))


def test_find_attacks_of_one_model_ignores_the_other_model_being_written(tmp_path):
  """--mode=characteristics of CE runs while an RCE attack may still be writing its folder."""
  (tmp_path / 'fgsm_mnist' / 'CE').mkdir(parents=True)
  (tmp_path / 'fgsm_mnist' / 'RCE').mkdir(parents=True)  # no summary yet: being written
  io_utils.atomic_write_json(str(tmp_path / 'fgsm_mnist' / 'CE' / result_files.SUMMARY),
                             {'dataset': 'mnist', 'model': 'CE'})
  found = result_files.find_attacks(str(tmp_path), 'mnist', ('CE',))
  assert found == {'fgsm': {'CE': str(tmp_path / 'fgsm_mnist' / 'CE')}}
  with pytest.raises(result_files.ResultsError, match='RCE: no summary.json'):
    result_files.find_attacks(str(tmp_path), 'mnist')  # a table of both models: loud
