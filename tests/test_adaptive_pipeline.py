"""Table 6 end to end on the session's digits CE and RCE models (issue "adaptive attacks").

A module fixture makes both kernels, fixes the detectors' thresholds on the test images after
the attacked ones (test_adv.py --mode=calibrate, through the command line for CE), runs FGSM
(detect needs a Table 2 row), a capped C&W-wb, the oblivious PGD and every detector-aware
attack against every detector (through the command line, each run forked from one
TensorFlow import: tests.helpers.run_parallel), and detect. The tests
check the calibration's false-positive rates, that every adaptive attack does what it claims
(a lower score of the attacked detector than the oblivious PGD), Table 6 cell by cell, Table
3's rescored C&W-wb, the targeted threat model, and the refusals of stale or overlapping
inputs.
"""
import csv
import io
import json
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import (MODELS, attack_args, describe, markdown_table, model_flags,  # pylint: disable=g-bad-import-order
                           run_parallel)
from rce.attacking import adaptive_runner  # pylint: disable=g-bad-import-order
from rce.attacking import attack_modes
from rce.attacking import attack_runner
from rce.detection import adaptive_evaluation
from rce.detection import adaptive_metrics
from rce.detection import calibration
from rce.detection import characteristics_runner
from rce.detection import detector_modes
from rce.model import restored_model
from rce.reports import detect_report
from rce.reports import table6_report
from rce.reports import table7_report
from rce.results import result_files
from rce.tables import attack_names
from rce.tables import errors
import dataset_input
import resnet_model

N_ATTACK = 50
CALIBRATION = 100  # test rows 50..149; Table 6's attacks take rows 150..199
EPS_ROUND = 8  # FGSM at eps 0.16: enough kept examples to fit the supervised detectors on
STEPS = 10
CW_FLAGS = ['--cw_batch_size=50', '--cw_max_iterations=20', '--cw_binary_search_steps=2',
            '--cw_learning_rate=0.1', '--cw_initial_const=10']
DETECTORS = attack_names.ADAPTIVE_DETECTORS
SUPERVISED = attack_names.SUPERVISED_DETECTORS
ENSEMBLE = attack_names.ENSEMBLE
ALL_DETECTORS = attack_names.TABLE6_DETECTORS
AWARE = attack_names.adaptive_attacks(detector_aware=True)
EPS = (0.1, 0.2, 0.3)


def _source(log_root, model):
  hps = resnet_model.default_hparams(num_classes=10, num_residual_units=1,
                                     optimizer='mom', RCE_train=model == 'RCE')
  return restored_model.ModelSource(hps, 'mnist', log_root, 0)


def _settings(method, log_root, model, digits_test, results, detector='k_density',
              targeted=False, num_images=N_ATTACK):
  """The in-process equivalent of test_adv.py --mode=attack for an adaptive attack."""
  params = attack_runner.AttackParams(
      batch_size=num_images, nb_iter=10, jsma_max_iter=100, tgsm_target='original',
      cw_overrides={k: None for k in attack_names.CW_SETTINGS}, seed=0,
      adaptive=adaptive_runner.AdaptiveParams(detector, targeted, STEPS, 1, 2, 0.05))
  return attack_modes.AttackSettings(
      method=method, source=_source(log_root, model), data_path=digits_test,
      num_images=num_images, eps=0.0, params=params, num_shards=1, shard_index=0,
      results_dir=results, save_pwd='',
      flags={'attack_method': method, 'detector': detector, 'targeted': targeted, 'seed': 0},
      shard_flags={})


def _calibrate(log_root, model, digits_test, results, attacked):
  return detector_modes.run_calibrate(detector_modes.CalibrationSettings(
      source=_source(log_root, model), data_path=digits_test, attacked=attacked,
      num_images=CALIBRATION, detectors=calibration.DetectorSettings(20, 100, 0),
      eps_round=EPS_ROUND,
      results_dir=results, flags={'attacked': attacked}))


@pytest.fixture(scope='module')
def adaptive_run(tmp_path_factory, shared_models, digits_train, digits_test):
  results = str(tmp_path_factory.mktemp('adaptive_results'))
  jobs = [attack_args(digits_test, shared_models[m], m == 'RCE', 'fgsm', N_ATTACK,
                      extra=['--results_dir=%s' % results]) for m in MODELS]
  jobs += [['test_adv.py', '--train_data_path=%s' % digits_train, '--mode=kernel_para',
            '--results_dir=%s' % results, '--eval_batch_count=15']
           + model_flags(shared_models[m], m == 'RCE') for m in MODELS]
  for proc in run_parallel(jobs):
    assert proc.returncode == 0, describe(proc)
  # FGSM's characteristics: what calibrate fits the supervised detectors on.
  jobs = [['test_adv.py', '--mode=characteristics', '--results_dir=%s' % results,
           '--eps_round=%d' % EPS_ROUND, '--lid_k=10', '--lid_batch=50']
          + model_flags(shared_models[m], m == 'RCE') for m in MODELS]
  for proc in run_parallel(jobs):
    assert proc.returncode == 0, describe(proc)
  # CE through the command line, RCE in-process: the thresholds after the 50 attacked images.
  jobs = [['test_adv.py', '--mode=calibrate', '--eval_data_path=%s' % digits_test,
           '--results_dir=%s' % results, '--eval_batch_count=1', '--eps_round=%d' % EPS_ROUND,
           '--calibration_images=%d' % CALIBRATION,
           '--attack_batch_size=%d' % N_ATTACK] + model_flags(shared_models['CE'], False),
          attack_args(digits_test, shared_models['CE'], False, 'carliniL2_specific', N_ATTACK,
                      extra=['--results_dir=%s' % results] + CW_FLAGS),
          attack_args(digits_test, shared_models['RCE'], True, 'carliniL2_specific', N_ATTACK,
                      extra=['--results_dir=%s' % results] + CW_FLAGS)]
  procs = run_parallel(jobs)
  for proc in procs:
    assert proc.returncode == 0, describe(proc)
  _calibrate(shared_models['RCE'], 'RCE', digits_test, results, N_ATTACK)
  jobs, names = [], []
  for model in MODELS:
    runs = [(m, d, False) for m in attack_names.adaptive_attacks()
            for d in (DETECTORS if m in AWARE else ('k_density',))]
    runs += [(m, d, False) for m in AWARE for d in SUPERVISED + (ENSEMBLE,)]
    runs += [(m, 'k_density', True) for m in ('pgd_cw', 'pgd_selective')]  # targeted, K-density
    for method, detector, targeted in runs:
      names.append((model, method, detector, targeted))
      jobs.append(attack_args(
          digits_test, shared_models[model], model == 'RCE', method, N_ATTACK,
          extra=['--results_dir=%s' % results, '--detector=%s' % detector,
                 '--targeted=%s' % targeted, '--pgd_steps=%d' % STEPS, '--pgd_restarts=1',
                 '--lagrange_steps=2']))
  for name, proc in zip(names, run_parallel(jobs)):
    assert proc.returncode == 0, (name, describe(proc))
  text, _ = detect_report.detect(results, 'mnist', eps_round=EPS_ROUND)
  return {'results': results, 'text': text,
          'detect_dir': os.path.join(results, 'detect_mnist')}


def _calibration_arrays(results, model):
  directory = result_files.thresholds_dir('mnist', model == 'RCE', results)
  summary = result_files.load_verified_summary(directory)
  with np.load(os.path.join(directory, result_files.THRESHOLDS_ARRAYS)) as data:
    return summary, {k: data[k] for k in data.files}


@pytest.mark.parametrize('model', MODELS)
def test_thresholds_flag_at_most_their_rate_of_the_calibration_images(adaptive_run, model):
  summary, arrays = _calibration_arrays(adaptive_run['results'], model)
  assert summary['calibration']['start'] == N_ATTACK
  assert summary['calibration']['count'] == CALIBRATION
  assert summary['calibration']['tie_rule'] == 'accepted when score <= threshold'
  assert summary['supervised']['fitted_on_images'] == N_ATTACK  # FGSM's rows, before
  for detector in attack_names.ENSEMBLE_MEMBERS:
    scores = arrays['scores_' + detector]
    assert np.all(np.isfinite(scores))
    for fpr in calibration.FPRS:
      t = summary['thresholds'][detector][calibration.threshold_key(fpr)]
      assert np.mean(scores > t) <= fpr
      assert np.sum(scores <= t) >= 1  # the threshold is one of the scores (accepted)
      assert t in scores.astype(np.float64)


def _mean_score_of_successful(results, run, model, detector):
  """{eps: mean numpy score of `detector` over the run's clean-correct, misclassified
  examples} (None where none); the ensemble's score is max_d (s_d - t_d) at 5 %."""
  rce = model == 'RCE'
  kernel, kernel_summary = result_files.load_kernel_params(
      result_files.kernel_dir('mnist', results), rce, 'mnist')
  calib = calibration.load(results, 'mnist', rce, kernel, kernel_summary)
  directory = result_files.adaptive_dir(run, 'mnist', rce, results_dir=results)
  summary = result_files.load_verified_summary(directory)
  chars = adaptive_evaluation.supervised_characteristics(directory, summary, calib)
  out = {}
  for r, eps in enumerate(summary['eps']):
    data = result_files.load_attack_round(directory, r)
    scores = adaptive_evaluation.round_scores(calib, data, chars, r)
    if detector == ENSEMBLE:
      adv = adaptive_evaluation.ensemble_scores({m: v[1] for m, v in scores.items()},
                                                calib.thresholds)[0.05]
    else:
      adv = scores[detector][1]
    ok = (data['labels_nor'] == data['labels_true']) & (data['labels_adv']
                                                        != data['labels_true'])
    out[eps] = float(adv[ok].mean()) if ok.any() else None
  return out


@pytest.mark.parametrize('model', MODELS)
@pytest.mark.parametrize('detector', ALL_DETECTORS)
def test_every_adaptive_attack_lowers_its_detectors_score_below_oblivious_pgd(
    adaptive_run, model, detector):
  results = adaptive_run['results']
  oblivious = _mean_score_of_successful(results, 'pgd_cw', model, detector)  # the same loss
  for method in AWARE:
    adaptive = _mean_score_of_successful(
        results, attack_names.adaptive_run(method, detector), model, detector)
    for eps in EPS:
      assert oblivious[eps] is not None and adaptive[eps] is not None, (method, eps)
      assert adaptive[eps] < oblivious[eps], (method, eps, adaptive[eps], oblivious[eps])


def test_table6_has_a_number_or_nc_with_its_reason_in_every_cell(adaptive_run):
  text = adaptive_run['text']
  assert '### Table 6: adaptive attacks on the detectors (untargeted, L-inf, mnist' in text
  header, rows = markdown_table(text, '| Detector / model | eps 0.1 oblivious')
  assert header[1:] == ['eps %g %s' % (eps, c) for eps in EPS for c in (
      'oblivious', 'Lagrangian', 'Selective', 'Orthogonal', 'worst case')]
  assert [r[0] for r in rows] == ['%s / %s' % (d, m) for d in (
      'K-density', 'Mahalanobis', 'LID', 'supervised K-density', 'supervised LID',
      'supervised Mahalanobis', 'ensemble (all six accept)') for m in MODELS]
  cell = re.compile(r'^(\d+\.\d|n/c) \((\d+\.\d|n/c)\)$')
  table6 = text[text.index('### Table 6: adaptive attacks on the detectors (untargeted'):]
  for row in rows:
    for value in row[1:]:
      assert cell.match(value) or value == 'n/c', (row[0], value)
      if 'n/c' in value:
        assert 'n/c: ' in table6 and row[0] in table6.split('n/c: ', 1)[1], row[0]


def _detail(adaptive_run, targeted=False):
  path = os.path.join(adaptive_run['detect_dir'],
                      'table6%s_detail.csv' % ('_targeted' if targeted else ''))
  with open(path) as f:
    return list(csv.DictReader(f))


def test_worst_case_never_below_an_attack_nor_a_smaller_eps(adaptive_run):
  rows = _detail(adaptive_run)
  by_key = {(r['detector'], r['model'], float(r['eps']), r['attack']): r for r in rows}
  for (detector, model, eps, attack), row in by_key.items():
    if attack != 'worst case' or row['n/c reason']:
      continue
    for fpr in ('1', '5', '50'):
      worst = int(row['fooled @%s' % fpr])
      for other in ('oblivious', 'Lagrangian', 'Selective', 'Orthogonal'):
        assert worst >= int(by_key[(detector, model, eps, other)]['fooled @%s' % fpr])
      for smaller in (e for e in EPS if e < eps):
        assert worst >= int(by_key[(detector, model, smaller, 'worst case')]['fooled @%s'
                                                                              % fpr])
      sr, low, high = (float(row['SR@%s%s' % (fpr, s)]) for s in ('', ' low', ' high'))
      assert low <= sr <= high


def test_table3_gains_the_sr_of_cw_wb_at_the_calibrated_thresholds(adaptive_run):
  path = os.path.join(adaptive_run['detect_dir'], 'table3_sr.csv')
  with open(path) as f:
    rows = list(csv.reader(f))
  assert rows[0] == ['Model', 'SR@5', 'SR@50']
  assert [r[0] for r in rows[1:]] == list(MODELS)
  for row in rows[1:]:
    for value in row[1:]:
      assert value == 'nan' or 0.0 <= float(value) <= 1.0
  assert 'C&W-wb at the calibrated K-density thresholds' in adaptive_run['text']


def test_targeted_threat_model_has_its_own_table(adaptive_run):
  text = adaptive_run['text']
  assert '### Table 6: adaptive attacks on the detectors (targeted, L-inf, mnist' in text
  rows = _detail(adaptive_run, targeted=True)
  ran = {(r['detector'], r['model'], r['attack']) for r in rows if not r['n/c reason']}
  for model in MODELS:
    assert ('K-density', model, 'Selective') in ran
    assert ('K-density', model, 'Lagrangian') not in ran  # not run targeted here


def test_the_command_line_run_records_its_settings_and_calibration(adaptive_run):
  directory = result_files.adaptive_dir('pgd_orthogonal_lid', 'mnist', True,
                                        results_dir=adaptive_run['results'])
  summary = result_files.load_verified_summary(directory)
  settings = summary['attack_stats']['settings']
  assert (settings['method'], settings['detector'], settings['loss'], settings['steps'],
          settings['restarts'], settings['targeted']) == ('orthogonal', 'lid', 'cw', STEPS, 1,
                                                          False)
  assert summary['eps'] == list(EPS)
  thresholds = result_files.load_verified_summary(
      result_files.thresholds_dir('mnist', True, adaptive_run['results']))
  assert summary['calibration_run_id'] == result_files.run_id(thresholds)
  assert settings['threshold'] == pytest.approx(thresholds['thresholds']['lid']['0.05'])
  assert summary['provenance']['flags']['detector'] == 'lid'


def test_a_new_calibration_makes_the_attacks_on_the_old_one_stale(adaptive_run, shared_models,
                                                                  digits_test, tmp_path):
  results = str(tmp_path / 'results')
  shutil.copytree(adaptive_run['results'], results)
  _calibrate(shared_models['CE'], 'CE', digits_test, results, N_ATTACK)
  with pytest.raises(errors.ResultsError, match='another calibration'):
    detect_report.detect(results, 'mnist', eps_round=EPS_ROUND)


def test_table6_attacks_take_the_rows_after_the_calibration_images(adaptive_run, tmp_path):
  results = adaptive_run['results']
  for run in ('pgd_cw', 'pgd_selective_supervised_lid'):
    summary = result_files.load_verified_summary(
        result_files.adaptive_dir(run, 'mnist', False, results_dir=results))
    assert summary['first_image'] == N_ATTACK + CALIBRATION
  # A run whose rows reach the calibration's (its summary edited) is refused.
  copied = str(tmp_path / 'results')
  shutil.copytree(results, copied)
  directory = result_files.adaptive_dir('pgd_cw', 'mnist', False, results_dir=copied)
  path = os.path.join(directory, result_files.SUMMARY)
  with open(path) as f:
    summary = json.load(f)
  summary['first_image'] = 0
  with open(path, 'w') as f:
    json.dump(summary, f)
  with pytest.raises(errors.ResultsError, match='attacked test images 0..49'):
    detect_report.detect(copied, 'mnist', eps_round=EPS_ROUND)


def test_adaptive_attacks_refuse_shards(adaptive_run, shared_models, digits_test):
  settings = _settings('pgd_cw', shared_models['CE'], 'CE', digits_test,
                       adaptive_run['results'])._replace(num_shards=2)
  with pytest.raises(ValueError, match='runs unsharded'):
    attack_modes.run_attack(settings)


def test_sr_of_an_accept_everything_threshold_is_the_plain_success_rate(adaptive_run):
  """At a threshold above every score, SR equals PGD's plain success rate (real results)."""
  results = adaptive_run['results']
  directory = result_files.adaptive_dir('pgd_cw', 'mnist', False, results_dir=results)
  data = result_files.load_attack_round(directory, 0)
  clean_correct = data['labels_nor'] == data['labels_true']
  success = data['labels_adv'] != data['labels_true']
  zeros = np.zeros(len(clean_correct))
  record = adaptive_metrics.evaluate(clean_correct, zeros, success, zeros,
                                     {f: 1.0 for f in adaptive_metrics.FPRS}, zeros, zeros)
  assert record.sr[0.05].value == pytest.approx(np.mean(success[clean_correct]))
  assert record.sr[0.05].value == record.plain_success.value


def test_detect_summary_records_the_adaptive_inputs(adaptive_run):
  summary = result_files.load_verified_summary(adaptive_run['detect_dir'])
  adaptive = summary['inputs']['adaptive']
  assert set(adaptive['calibrations']) == set(MODELS)
  assert len(adaptive['runs']) == 2 * (3 + 3 * 3 + 3 * 4 + 2)
  for name in ('table6.md', 'table6.csv', 'table6_detail.csv', 'table6_targeted.csv',
               'table6_targeted_detail.csv', 'table3_sr.csv'):
    assert name in summary['files'], name
  with open(os.path.join(adaptive_run['detect_dir'], 'table6.csv')) as f:
    assert next(csv.reader(io.StringIO(f.read())))[0] == 'Detector / model'


def _table7_detail(adaptive_run):
  with open(os.path.join(adaptive_run['detect_dir'], 'table7_detail.csv')) as f:
    return list(csv.DictReader(f))


def _number(text):
  return None if text in ('', 'nan') else float(text)


def test_table7_diagonal_equals_table6_cells(adaptive_run):
  """A run scored by the detector it attacked (and an oblivious run by any detector) is the
  very Table 6 cell of that detector and attack."""
  table6 = {(r['detector'], r['model'], float(r['eps']), r['attack']): r
            for r in _detail(adaptive_run)}
  row_title = dict(table6_report.DETECTORS)
  key_of = {title: key for key, title in table7_report.DETECTOR_TITLES.items()}
  checked = 0
  for row in _table7_detail(adaptive_run):
    tuned = row['attack'] in ('Lagrangian', 'Selective', 'Orthogonal')
    if not (tuned and row['attacked detector'] == row['scored by']
            or row['attack'] == 'oblivious'):
      continue
    cell = table6[(row_title[key_of[row['scored by']]], row['model'], float(row['eps']),
                   row['attack'])]
    for column in ('SR@5', 'SR@5 low', 'SR@5 high', 'fooled @5', 'eligible @5'):
      assert _number(row[column]) == _number(cell[column]), (row['Row'], column)
    checked += 1
  assert checked == len(MODELS) * len(EPS) * len(ALL_DETECTORS) * (len(AWARE) + 1)


def test_table7_ensemble_is_never_above_a_single_detector_on_the_same_images(adaptive_run):
  rows = _table7_detail(adaptive_run)
  groups = {}
  for row in rows:
    groups.setdefault((row['model'], row['eps'], row['attack'], row['attacked detector']),
                      {})[row['scored by']] = row
  compared = 0
  for key, by_detector in groups.items():
    ensemble = _number(by_detector['ensemble']['SR@5'])
    for name, row in by_detector.items():
      on_same = _number(row['SR@5 on ensemble images'])
      if name == 'ensemble' or ensemble is None or on_same is None:
        continue
      assert ensemble <= on_same, (key, name, ensemble, on_same)
      assert int(row['ensemble images @5']) <= int(row['eligible @5'])
      compared += 1
  assert compared >= len(MODELS) * len(EPS) * 6  # every run's six detectors somewhere


def test_the_supervised_attacks_keep_their_characteristics_and_provenance(adaptive_run):
  results = adaptive_run['results']
  directory = result_files.adaptive_dir('pgd_orthogonal_ensemble', 'mnist', True,
                                        results_dir=results)
  summary = result_files.load_verified_summary(directory)
  settings = summary['attack_stats']['settings']
  assert settings['detector'] == ENSEMBLE
  assert settings['ensemble_of'] == list(attack_names.ENSEMBLE_MEMBERS)
  assert settings['threshold'] == 0.0
  assert summary['supervised_characteristics'] == sorted(SUPERVISED)
  chars = result_files.load_supervised_characteristics(directory, summary)
  for name in SUPERVISED:
    assert chars[name + '_nor'].shape[0] == summary['num_examples']
    assert chars[name + '_adv'].shape[:2] == (len(EPS), summary['num_examples'])
    assert np.all(np.isfinite(chars[name + '_adv']))
  assert 'Table 7: transfer' in adaptive_run['text']


def test_a_calibration_fitted_on_other_characteristics_is_refused(adaptive_run, tmp_path):
  """The supervised detectors the attacks faced must be the ones Table 4 fits now."""
  copied = str(tmp_path / 'results')
  shutil.copytree(adaptive_run['results'], copied)
  path = os.path.join(result_files.thresholds_dir('mnist', True, copied), result_files.SUMMARY)
  with open(path) as f:
    summary = json.load(f)
  summary['supervised']['characteristics_run_id'] = 'an-older-run'
  with open(path, 'w') as f:
    json.dump(summary, f)
  with pytest.raises(errors.ResultsError, match='fitted the supervised detectors on fgsm'):
    detect_report.detect(copied, 'mnist', eps_round=EPS_ROUND)


def test_the_real_models_graph_scores_equal_the_calibrations_numpy_scores(
    adaptive_run, shared_models, digits_test):
  """On the CE model and its calibration images, every supervised detector's graph (and the
  ensemble's sum of excesses) gives the scores calibrate computed the numpy way."""
  results = adaptive_run['results']
  kernel, kernel_summary = result_files.load_kernel_params(
      result_files.kernel_dir('mnist', results), False, 'mnist')
  calib = calibration.load(results, 'mnist', False, kernel, kernel_summary)
  _, arrays = _calibration_arrays(results, 'CE')
  images = dataset_input.load_arrays('mnist', digits_test)[0][calib.start:calib.end]
  model = restored_model.restore(_source(shared_models['CE'], 'CE'))
  try:
    stats = characteristics_runner.stats_from_kernel(
        kernel, list(model.layers), result_files.kernel_dir('mnist', results), False)
    with model.graph.as_default():
      graphs = adaptive_runner.DetectorGraphs(model, calib, stats, 0.05)
      outputs = adaptive_runner.Outputs(model.images, model.feature, model.layers)
      classes = tf.stop_gradient(tf.argmax(model.logits, axis=1, output_type=tf.int32))
      names = list(SUPERVISED) + [ENSEMBLE]
      tensors = [graphs.score(n, outputs, classes) for n in names]
    got = dict(zip(names, model.sess.run(tensors, {model.images: images})))
  finally:
    model.close()
  for name in SUPERVISED:
    want = arrays['scores_' + name]
    tolerance = 1e-4 * (want.max() - want.min()) + 1e-5  # float32 graphs, float64 numpy
    assert np.max(np.abs(got[name] - want)) <= tolerance, name
  excess = sum(np.maximum(arrays['scores_' + m] - calib.threshold(m, 0.05), 0.0)
               for m in attack_names.ENSEMBLE_MEMBERS)
  assert np.allclose(got[ENSEMBLE], excess, rtol=1e-4, atol=1e-4)
