"""LID and Mahalanobis next to K-density (issue "detector comparison"), on the digits.

A module fixture attacks the session's CE and RCE ResNet-8 (conftest) with FGSM and C&W,
makes both kernels (with the Mahalanobis statistics), the characteristics of both models and
runs detect. The tests check the new Table 2 columns and Tables 4 and 5 cell by cell, the
per-example CSV, that characteristics do not depend on the batch they are computed in, Lee et
al.'s pre-processing step on a small graph, and the errors for missing or stale inputs.
"""
import csv
import io
import json
import os
import re
import shutil
import types

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import (MODELS, attack_args, describe, markdown_table, model_flags,  # pylint: disable=g-bad-import-order
                      run_parallel, run_script)
from rce.detection import characteristics  # pylint: disable=g-bad-import-order
from rce.detection import characteristics_runner
from rce.detection import detect_characteristics
from rce.detection import supervised_evaluation
from rce.reports import supervised_report
from rce.results import io_utils
import resnet_model
from rce.results import result_files

tf1 = tf.compat.v1
N_ATTACK = 100
EPS_ROUND = 2
CW_FLAGS = ['--cw_batch_size=50', '--cw_max_iterations=30', '--cw_binary_search_steps=2',
            '--cw_learning_rate=0.1', '--cw_initial_const=10']
DETECTORS = ('K-density', 'LID', 'Mahalanobis')


def _characteristics_args(log_root, model, results, extra=()):
  return (['test_adv.py', '--mode=characteristics', '--results_dir=%s' % results,
           '--eps_round=%d' % EPS_ROUND] + model_flags(log_root, model == 'RCE') + list(extra))


@pytest.fixture(scope='module')
def compared(tmp_path_factory, shared_models, digits_train, digits_test):
  results = str(tmp_path_factory.mktemp('compare_results'))
  jobs = [attack_args(digits_test, shared_models[m], m == 'RCE', method, N_ATTACK,
                      extra=['--results_dir=%s' % results] + (
                          CW_FLAGS if method == 'carliniL2' else []))
          for method in ('fgsm', 'carliniL2') for m in MODELS]
  jobs += [['test_adv.py', '--train_data_path=%s' % digits_train, '--mode=kernel_para',
            '--results_dir=%s' % results, '--eval_batch_count=15']
           + model_flags(shared_models[m], m == 'RCE') for m in MODELS]
  for proc in run_parallel(jobs):
    assert proc.returncode == 0, describe(proc)
  for proc in run_parallel([_characteristics_args(shared_models[m], m, results)
                            for m in MODELS]):
    assert proc.returncode == 0, describe(proc)
  detect = run_script(['test_adv.py', '--mode=detect', '--dataset=mnist',
                       '--results_dir=%s' % results, '--eps_round=%d' % EPS_ROUND])
  assert detect.returncode == 0, describe(detect)
  out = os.path.join(results, 'detect_mnist')
  with open(os.path.join(out, 'table2.md')) as f:
    table2 = f.read()
  with open(os.path.join(out, 'table4_5.md')) as f:
    table45 = f.read()
  return dict(results=results, out=out, stdout=detect.stdout, table2=table2,
              table45=table45, models=shared_models)


def _cells_are_numbers_or_nc(rows, first, last):
  for row in rows:
    for cell in row[first:last]:
      assert cell == 'n/c' or re.fullmatch(r'[01]\.[0-9]{4}', cell), row


def test_table2_gains_unsupervised_lid_and_mahalanobis_columns(compared):
  header, rows = markdown_table(compared['table2'], '| Attack')
  assert header[7:11] == ['Mahalanobis CE', 'Mahalanobis RCE', 'LID CE', 'LID RCE'], header
  assert [r[0].split(' (')[0] for r in rows] == ['FGSM', 'C&W']
  _cells_are_numbers_or_nc(rows, 1, 11)
  assert 'Mahalanobis (Lee et al.) and LID (Ma et al.): unsupervised' in compared['table2']
  # The Table 2 cells recomputed from the characteristics files with scikit-learn.
  from sklearn.metrics import roc_auc_score  # pylint: disable=g-import-not-at-top
  for row, attack in zip(rows, ('fgsm', 'carliniL2')):
    for model in MODELS:
      directory = result_files.attack_dir(attack, 'mnist', model == 'RCE',
                                          results_dir=compared['results'])
      data = result_files.load_attack_round(directory, EPS_ROUND - 1 if attack == 'fgsm' else 0)
      with np.load(os.path.join(result_files.characteristics_dir(directory),
                                'characteristics.npz')) as chars:
        li = list(chars['layers']).index('feature')
        keep = ((data['labels_nor'] == data['labels_true'])
                & (data['labels_adv'] != data['labels_true']))
        for column, nor, adv in (
            ('Mahalanobis', chars['mahalanobis_normal'][:, li, 0],
             chars['mahalanobis_adv'][:, li, 0]),
            ('LID', -chars['lid_normal'][:, li], -chars['lid_adv'][:, li])):
          cell = row[header.index('%s %s' % (column, model))]
          if keep.sum() < 1:
            assert cell == 'n/c'
            continue
          y = np.r_[np.ones(keep.sum()), np.zeros(keep.sum())]
          expected = roc_auc_score(y, np.r_[nor[keep], adv[keep]])
          assert float(cell) == pytest.approx(expected, abs=6e-5), (attack, model, column)


def test_table4_every_cell_a_number_or_nc_with_its_reason(compared):
  text = compared['table45']
  header, rows = markdown_table(text, '| Attack: detector |')
  assert header[1:] == ['AUROC CE', 'AUROC RCE', 'detected at 5 % FPR CE',
                        'detected at 5 % FPR RCE']
  assert "Lee et al.'s TNR at TPR 95 %" in text and 'Ties:' in text
  assert [r[0] for r in rows] == ['%s: %s' % (a, d) for a in ('FGSM', 'C&W')
                                  for d in DETECTORS]
  _cells_are_numbers_or_nc(rows, 1, 5)
  if any('n/c' in r for r in rows):  # each n/c cell's reason is given under the table
    assert re.search(r'^n/c in Table 4 \(.+\): ', text, flags=re.M), text
  fgsm = {r[0]: r for r in rows}
  assert all(fgsm['FGSM: %s' % d][1] != 'n/c' for d in DETECTORS), rows  # FGSM succeeds often
  assert 'Split: 80 of the 100 attacked images for training, 20 for testing' in text
  assert 'stratified by class' in text


def test_table5_fgsm_seen_row_equals_table4_and_other_attacks_have_a_cell(compared):
  text = compared['table45']
  _, rows4 = markdown_table(text, '| Attack: detector |')
  header5, rows5 = markdown_table(text, '| Attack: detector (trained on FGSM)')
  assert header5[1:] == ['AUROC CE', 'AUROC RCE']
  table4 = {r[0]: r for r in rows4}
  for row in rows5:
    if row[0].endswith('(seen)'):  # trained on FGSM's training part, scored on its test part
      assert row[1:3] == table4[row[0][:-len(' (seen)')]][1:3], row
  assert [r[0] for r in rows5] == (['FGSM: %s (seen)' % d for d in DETECTORS]
                                   + ['C&W: %s' % d for d in DETECTORS])
  _cells_are_numbers_or_nc(rows5, 1, 3)
  assert 'Table 4' in compared['stdout'] and 'Table 5' in compared['stdout']


def test_table4_csv_and_per_example_scores_agree_with_the_protocol(compared):
  """The FGSM LID cell of Table 4 recomputed from per_example_scores.csv and the split."""
  with open(os.path.join(compared['out'], 'table4.csv')) as f:
    table4 = {r['Attack: detector']: r for r in csv.DictReader(f)}
  with open(os.path.join(compared['out'], 'per_example_scores.csv')) as f:
    rows = list(csv.DictReader(f))
  assert {r['attack'] for r in rows} == {'fgsm', 'carliniL2'}
  assert {r['version'] for r in rows} == {'normal', 'adversarial', 'noisy'}
  assert len(rows) == 2 * 2 * N_ATTACK * 3
  from sklearn.metrics import roc_auc_score  # pylint: disable=g-import-not-at-top
  for model in MODELS:
    test = [r for r in rows if r['attack'] == 'fgsm' and r['model'] == model
            and r['kept'] == 'True' and r['split'] == 'test']
    y = [1 if r['version'] == 'adversarial' else 0 for r in test]
    scores = [float(r['supervised_lid']) for r in test]
    assert float(table4['FGSM: LID']['AUROC %s' % model]) == pytest.approx(
        roc_auc_score(y, scores))
    adv = [s for s, t in zip(scores, y) if t]
    normal = [s for s, t in zip(scores, y) if not t]
    flagged = [r['flagged_lid'] == 'True' for r in test]
    assert np.mean([f for f, t in zip(flagged, y) if not t]) <= 0.05  # FPR 5 % at most
    detected = characteristics.detected_at_fpr(normal, adv, 0.05)
    assert float(table4['FGSM: LID']['detected at 5 %% FPR %s' % model]) == pytest.approx(
        detected)
    assert np.mean([f for f, t in zip(flagged, y) if t]) == pytest.approx(detected)
    # Lee et al.'s calculate_log by brute force: normal and noisy rows are the positives;
    # the smallest threshold accepting 95 % of them; the adversarial rows above it.
    t = min(c for c in normal if np.mean(np.asarray(normal) <= c) >= 0.95)
    assert detected == pytest.approx(np.mean(np.asarray(adv) > t))
    # the split is one split of the images: same examples on the test side for every attack
    splits = {(r['attack'], r['example']): r['split'] for r in rows if r['model'] == model}
    assert all(splits[('fgsm', e)] == splits[('carliniL2', e)]
               for (_, e) in splits)


def test_characteristics_do_not_depend_on_the_batch(compared, tmp_path):
  """Computed at --lid_batch 100 over extraction batches of 100 and of 7: the same arrays."""
  from rce.model import restored_model  # pylint: disable=g-import-not-at-top
  directory = result_files.attack_dir('fgsm', 'mnist', True, results_dir=compared['results'])
  kernel, _ = result_files.load_kernel_params(
      result_files.kernel_dir('mnist', compared['results']), True, 'mnist')
  hps = resnet_model.default_hparams(num_residual_units=1, RCE_train=True)
  model = restored_model.RestoredModel(hps, 'mnist', compared['models']['RCE'])
  try:
    stats = characteristics_runner.stats_from_kernel(kernel, list(model.layers), '-', True)
    layer_model = characteristics_runner.LayerModel(model, stats)
    one, _ = characteristics_runner.attack_characteristics(
        layer_model, stats, directory, EPS_ROUND, 20, 100, 0, batch_size=100)
    many, _ = characteristics_runner.attack_characteristics(
        layer_model, stats, directory, EPS_ROUND, 20, 100, 0, batch_size=7)
    # The same folder as an L0 attack's: its noisy copies flip pixels instead.
    as_jsma = str(tmp_path / 'as_jsma')
    shutil.copytree(directory, as_jsma)
    summary = result_files.load_summary(as_jsma)
    summary['attack'] = 'jsma'
    io_utils.atomic_write_json(os.path.join(as_jsma, result_files.SUMMARY), summary)
    l0_arrays, l0_facts = characteristics_runner.attack_characteristics(
        layer_model, stats, as_jsma, EPS_ROUND, 20, 100, 0)
    l0_noisy = model.outputs(characteristics.l0_noisy_copies(
        np.load(os.path.join(directory, 'nor_img.npy')),
        np.load(os.path.join(directory, 'adv_img.npy'))[EPS_ROUND - 1], 0), 100)[1]
  finally:
    model.close()
  np.testing.assert_allclose(l0_arrays['noisy_feature'], l0_noisy, rtol=1e-5, atol=1e-6)
  assert l0_facts['noise'] == 'l0'
  # Gaussian noise: the kept examples' noisy copies have their adversarial images' mean L2.
  data = result_files.load_attack_round(directory, EPS_ROUND - 1)
  with open(os.path.join(result_files.characteristics_dir(directory),
                         result_files.SUMMARY)) as f:
    saved_summary = json.load(f)
  keep = np.asarray(data['labels_nor']) == np.asarray(data['labels_true'])
  keep &= np.asarray(data['labels_adv']) != np.asarray(data['labels_true'])
  l2 = np.asarray(data['L2_distance'], np.float64)
  assert saved_summary['noise'] == 'gaussian'
  assert saved_summary['noise_mean_l2'] == pytest.approx(l2[keep].mean(), rel=2e-3)
  with np.load(os.path.join(result_files.characteristics_dir(directory),
                            'characteristics.npz')) as saved:
    for name in one:
      assert one[name].dtype == many[name].dtype, name
      if one[name].dtype.kind in 'fc':
        np.testing.assert_allclose(one[name], many[name], rtol=2e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(one[name], saved[name], rtol=2e-5, atol=1e-6,
                                   err_msg=name)
      else:
        np.testing.assert_array_equal(one[name], many[name], err_msg=name)


def _small_layer_model(seed=0):
  """A freshly initialized ResNet-8 in a session, as test_adv.py's restored model."""
  graph = tf.Graph()
  with graph.as_default():
    tf1.set_random_seed(seed)
    images = tf1.placeholder(tf.float32, [None, 28, 28, 1])
    net = resnet_model.build_network(resnet_model.default_hparams(num_residual_units=1),
                                     images, 'eval')
    sess = tf1.Session(graph=graph)
    sess.run(tf1.global_variables_initializer())
  return types.SimpleNamespace(graph=graph, images=images, layers=net.layers, sess=sess)


def test_mahalanobis_preprocessing_moves_each_pixel_by_eps_and_raises_the_score():
  rng = np.random.RandomState(0)
  model = _small_layer_model()
  train = rng.uniform(-0.5, 0.5, (200, 28, 28, 1)).astype(np.float32)
  labels = np.arange(200) % 10
  plain = characteristics_runner.LayerModel(model)
  stats_arrays = characteristics_runner.training_statistics(
      plain.names, plain.outputs(train, pooled=True), labels, 10)
  stats = {n: (stats_arrays['maha_means_' + n], stats_arrays['maha_precision_' + n])
           for n in plain.names}
  with model.graph.as_default():
    layer_model = characteristics_runner.LayerModel(model, stats)
  x = rng.uniform(-0.5, 0.5, (30, 28, 28, 1)).astype(np.float32)
  x[:, :2] = 0.5  # pixels at the top of the range: Lee et al. do not clip a step up
  pooled = layer_model.outputs(x, pooled=True)
  stepped_out = 0
  for li, name in enumerate(layer_model.names):
    means, precision = stats[name]
    # the statistics are Lee et al.'s: EmpiricalCovariance of the class-centred features
    before, _ = characteristics.mahalanobis_scores(pooled[li], means, precision)
    for eps in (0.0005, 0.002):
      moved = layer_model.preprocessed_all(x, eps)[li]
      step = moved.astype(np.float64) - x
      # every pixel moves by exactly eps (a zero gradient steps down, as Lee et al.'s
      # torch.ge), none is clipped: the top row goes above the image range
      np.testing.assert_allclose(np.abs(step), eps, rtol=1e-3, err_msg=name)
      up = step[:, :2] > 0
      np.testing.assert_allclose(moved[:, :2][up], 0.5 + eps, rtol=1e-6, err_msg=name)
      stepped_out += int(up.sum())
      after, _ = characteristics.mahalanobis_scores(
          layer_model.outputs(moved, pooled=True)[li], means, precision)
      assert np.all(after >= before - 1e-6 * np.abs(before)), (name, eps,
                                                                np.min(after - before))
  model.sess.close()
  assert stepped_out > 0  # some pixels at 0.5 stepped above the range


def test_mahalanobis_statistics_are_lee_et_al(compared):
  """kernel_para's statistics equal EmpiricalCovariance of the class-centred training
  features of every layer (recomputed here from the model and the training images)."""
  kernel, _ = result_files.load_kernel_params(
      result_files.kernel_dir('mnist', compared['results']), False, 'mnist')
  for name in resnet_model.LAYER_NAMES:
    means, precision = kernel['maha_means_' + name], kernel['maha_precision_' + name]
    assert means.shape[0] == 10 and precision.shape == (means.shape[1],) * 2
    np.testing.assert_allclose(precision, precision.T, rtol=1e-6, atol=1e-8)
  feature_means = kernel['maha_means_feature']
  features = np.loadtxt(os.path.join(result_files.kernel_dir('mnist', compared['results']),
                                     'training_logits_CE'))
  labels = np.loadtxt(os.path.join(result_files.kernel_dir('mnist', compared['results']),
                                   'training_labels_CE')).astype(int)
  expected_means, expected_precision = characteristics.class_statistics(features, labels, 10)
  np.testing.assert_allclose(feature_means, expected_means, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(kernel['maha_precision_feature'], expected_precision, rtol=1e-3,
                             atol=1e-3 * np.abs(expected_precision).max())


def test_example_split_is_stratified_and_seeded():
  labels = np.repeat(np.arange(10), 20)
  train, test, stratified = detect_characteristics.example_split(labels, seed=0)
  assert stratified and len(test) == 40 and not np.intersect1d(train, test).size
  assert np.all(np.bincount(labels[test]) == 4)
  again = detect_characteristics.example_split(labels, seed=0)
  assert np.array_equal(again[1], test)
  assert not np.array_equal(detect_characteristics.example_split(labels, seed=1)[1], test)
  single = np.r_[labels, 10]  # a class with one image: no stratification, said so
  assert detect_characteristics.example_split(single, seed=0)[2] is False


def _hand_made_evaluation():
  """A SupervisedEvaluation made by hand: FGSM and C&W on CE, nothing on RCE."""
  se = supervised_evaluation
  split = se.ExampleSplit(np.arange(8), np.arange(8, 10), True, 0, 10)
  no_test = 'no kept example in the test part'
  detectors = {('fgsm', 'CE', d): se.DetectorScore(0.9, 0.5, None)
               for d in detect_characteristics.DETECTORS}
  detectors[('fgsm', 'CE', 'lid')] = se.DetectorScore(None, None, no_test)
  transfer = {('fgsm', 'CE', d): se.TransferScore(0.9, None)
              for d in detect_characteristics.DETECTORS}
  for d in detect_characteristics.DETECTORS:
    detectors[('carliniL2', 'CE', d)] = se.DetectorScore(None, None, no_test)
    transfer[('carliniL2', 'CE', d)] = se.TransferScore(None, 'test part has no kept example')
  chosen = {('fgsm', 'CE'): se.ChosenEps(0.002, [0.8, 0.9])}
  example = se.ExampleScores('fgsm', 'CE', 0, 'normal', True, 'test', -1.5, 0.25, -3.0,
                             0.125, None, 0.5, False, None, True)
  return se.SupervisedEvaluation(split, detectors, transfer, chosen, [example])


def test_tables_4_and_5_render_a_hand_made_evaluation():
  """Every cell, the reason of every n/c cell (both tables, under Table 4), the command for
  the cells without characteristics, the seen rows and the summary's split record."""
  evaluation = _hand_made_evaluation()
  commands = {'CE': 'make CE', 'RCE': 'make RCE'}
  table4, table5 = supervised_report.tables(['fgsm', 'carliniL2'], evaluation, commands)
  assert table4.rows[:2] == [('FGSM: K-density', [0.9, None, 0.5, None]),
                             ('FGSM: LID', [None, None, None, None])]
  assert [label for label, _ in table5.rows] == (['FGSM: %s (seen)' % d for d in DETECTORS]
                                                 + ['C&W: %s' % d for d in DETECTORS])
  assert table5.rows[0][1] == [0.9, None] and table5.rows[3][1] == [None, None]
  assert table4.notes[:5] == [
      'Split: 8 of the 10 attacked images for training, 2 for testing (seeded, stratified by '
      'class); one split for every attack and both models.',
      'n/c in Table 4 (FGSM CE, C&W CE): no kept example in the test part.',
      'n/c in Table 5 (C&W CE): test part has no kept example.',
      'n/c in Tables 4 and 5 (FGSM RCE, C&W RCE): no results or characteristics (make them '
      'with: make RCE).',
      'Mahalanobis pre-processing eps chosen: FGSM CE 0.002.']
  assert not table5.notes
  text = supervised_report.markdown(table4, table5)
  assert text.startswith('### ' + supervised_report.TABLE4_TITLE + '\n\n| Attack: detector |')
  assert (text.index(supervised_report.DETECTED_NOTE) < text.index('### Table 5')
          < text.index('| Attack: detector (trained on FGSM) |'))
  assert evaluation.split_record() == {
      'train': 8, 'test': 2, 'stratified': True, 'seed': 0,
      'mahalanobis_eps': {'fgsm': {'CE': {'eps': 0.002, 'validation_aurocs': [0.8, 0.9]}}}}
  rows = list(csv.reader(io.StringIO(
      supervised_report.examples_table(evaluation.examples).csv())))
  assert rows == [list(supervised_evaluation.ExampleScores._fields),
                  ['fgsm', 'CE', '0', 'normal', 'True', 'test', '-1.5', '0.25', '-3.0',
                   '0.125', '', '0.5', 'False', '', 'True']]
  _, without_fgsm = supervised_report.tables(['carliniL2'], evaluation, commands)
  assert without_fgsm.notes == ['n/c: no FGSM results to train on.']


def test_missing_characteristics_name_the_command(compared, tmp_path):
  results = str(tmp_path / 'results')
  shutil.copytree(compared['results'], results)
  shutil.rmtree(os.path.join(results, 'detect_mnist'))
  for model in MODELS:
    shutil.rmtree(result_files.characteristics_dir(
        result_files.attack_dir('carliniL2', 'mnist', model == 'RCE', results_dir=results)))
  proc = run_script(['test_adv.py', '--mode=detect', '--dataset=mnist',
                     '--results_dir=%s' % results, '--eps_round=%d' % EPS_ROUND])
  assert proc.returncode == 0, describe(proc)
  with open(os.path.join(results, 'detect_mnist', 'table4_5.md')) as f:
    text = f.read()
  _, rows = markdown_table(text, '| Attack: detector |')
  assert all(r[1:] == ['n/c'] * 4 for r in rows if r[0].startswith('C&W')), rows
  assert ('n/c in Tables 4 and 5 (C&W CE): no results or characteristics (make them with: '
          'python test_adv.py --mode=characteristics --dataset=mnist --RCE_train=False'
          in text), text


def test_stale_characteristics_are_refused(compared, tmp_path):
  """After the attack is rerun, its old characteristics no longer belong to it."""
  results = str(tmp_path / 'results')
  shutil.copytree(compared['results'], results)
  directory = result_files.attack_dir('fgsm', 'mnist', False, results_dir=results)
  summary = result_files.load_summary(directory)
  summary['provenance']['run_id'] = 'another-run'
  io_utils.atomic_write_json(os.path.join(directory, result_files.SUMMARY), summary)
  proc = run_script(['test_adv.py', '--mode=detect', '--dataset=mnist',
                     '--results_dir=%s' % results, '--eps_round=%d' % EPS_ROUND])
  assert proc.returncode != 0
  assert 'computed from another run of the attack' in proc.stderr, describe(proc)
  assert '--mode=characteristics' in proc.stderr
