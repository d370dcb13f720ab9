"""The detection pipeline end to end on the bundled digits (issue "detection", SPEC.md 8-10).

One module fixture takes the session's CE and RCE ResNet-8 (conftest), attacks each with
fgsm and bim (60 test images, the eps sweep), computes the kernel parameters of both, runs the
white-box C&W (carliniL2_specific) on both, then `test_adv.py --mode=detect` and t_sne.py.
The tests check the written files against numbers recomputed here in numpy from the saved
result files (AUCs with scikit-learn, K-densities, f2 of the white-box attack), and the error
cases of detect.
"""
import csv
import os
import shutil

import numpy as np
import pytest
from scipy.special import logsumexp
from sklearn.metrics import roc_auc_score

from tests.helpers import (AUC_COLUMNS, MODELS, attack_args, describe, is_png,  # pylint: disable=g-bad-import-order
                           markdown_table, model_flags, run_parallel, run_script,
                           save_hand_made_results)
from rce.attacking import attack_runner  # pylint: disable=g-bad-import-order
import dataset_input
from rce.reports import detect_report
from rce.results import result_files

N_ATTACK = 60
N_WB = 20
EPS_ROUND = 2  # eps 0.04: FGSM/BIM succeed on many, not all, of the 60 images
CW_FLAGS = ['--cw_batch_size=%d' % N_WB, '--cw_max_iterations=100',
            '--cw_binary_search_steps=3', '--cw_learning_rate=0.1', '--cw_initial_const=10']


def log_kd(features, classes, points, point_labels, sigma2):
  """log of mean_i exp(-||z - z_i||^2 / sigma2) over the points of each row's class."""
  out = np.empty(len(features))
  for i, (z, c) in enumerate(zip(np.asarray(features, np.float64), classes)):
    zs = np.asarray(points, np.float64)[point_labels == c]
    d2 = np.sum(np.square(zs - z), axis=1)
    out[i] = logsumexp(-d2 / sigma2) - np.log(len(zs))
  return out


# ---- the pipeline ------------------------------------------------------------------------


@pytest.fixture(scope='module')
def pipeline(tmp_path_factory, shared_models, digits_train, digits_test):
  """Trained models, attack results, kernel parameters, detect and t-SNE outputs."""
  models = shared_models  # trained once per session (conftest), shared with test_adv_cli
  results = str(tmp_path_factory.mktemp('detect_results'))
  jobs = [attack_args(digits_test, models[m], m == 'RCE', method, N_ATTACK,
                      extra=['--results_dir=%s' % results])
          for method in ('fgsm', 'bim') for m in MODELS]
  jobs += [['test_adv.py', '--train_data_path=%s' % digits_train, '--mode=kernel_para',
            '--results_dir=%s' % results, '--eval_batch_count=15'] + model_flags(models[m],
                                                                                m == 'RCE')
           for m in MODELS]
  procs = run_parallel(jobs)
  for proc in procs:
    assert proc.returncode == 0, describe(proc)
  kernel_procs = {m: procs[4 + i] for i, m in enumerate(MODELS)}
  detect = ['test_adv.py', '--mode=detect', '--dataset=mnist', '--results_dir=%s' % results,
            '--eps_round=%d' % EPS_ROUND]
  tsne_out = os.path.join(results, 'tsne_fgsm.png')
  tsne = ['t_sne.py', '--dataset=mnist', '--attack_method=fgsm', '--results_dir=%s' % results,
          '--eps_round=%d' % EPS_ROUND, '--tsne_out=%s' % tsne_out]
  # detect runs on fgsm/bim only: the white-box results go to their own folder.
  wb_results = os.path.join(results, 'wb')
  os.makedirs(wb_results)
  shutil.copytree(result_files.kernel_dir('mnist', results),
                  result_files.kernel_dir('mnist', wb_results))
  wb = [attack_args(digits_test, models[m], m == 'RCE', 'carliniL2_specific', N_WB,
                    extra=['--results_dir=%s' % wb_results] + CW_FLAGS) for m in MODELS]
  detect_proc, tsne_proc, wb_ce, wb_rce = run_parallel([detect, tsne] + wb)
  return dict(models=models, results=results, detect=detect_proc, tsne=tsne_proc,
              tsne_out=tsne_out, kernel_procs=kernel_procs, wb={'CE': wb_ce, 'RCE': wb_rce},
              wb_results=wb_results, train_file=digits_train)


def test_detect_writes_table2_with_every_auc_cell(pipeline):
  proc = pipeline['detect']
  assert proc.returncode == 0, describe(proc)
  out_dir = os.path.join(pipeline['results'], 'detect_mnist')
  with open(os.path.join(out_dir, 'table2.md')) as f:
    text = f.read()
  assert text.strip() in proc.stdout  # the table is printed too
  header, rows = markdown_table(text, '| Attack | Confidence')
  assert header[:7] == ['Attack'] + AUC_COLUMNS, header
  titles = [r[0] for r in rows]
  assert [t.split(' (')[0] for t in titles] == ['FGSM', 'BIM'], titles
  assert all('eps 0.04' in t for t in titles), titles
  numbers = 0
  for row in rows:
    assert len(row) == len(header), row
    for cell in row[1:7]:
      assert cell, row
      if cell != 'n/c':
        assert 0.0 <= float(cell) <= 1.0, row
        numbers += 1
  assert numbers >= 6, rows  # some kept examples at eps 0.04: not everything n/c
  assert '### Thresholding test' in text
  _, threshold_rows = markdown_table(text, '| Attack | Model |')
  assert sorted((r[0], r[1]) for r in threshold_rows) == sorted(
      (a, m) for a in ('FGSM', 'BIM') for m in MODELS), threshold_rows


def test_table2_csv_parses_and_matches_sklearn_on_the_files(pipeline):
  assert pipeline['detect'].returncode == 0, describe(pipeline['detect'])
  results = pipeline['results']
  with open(os.path.join(results, 'detect_mnist', 'table2.csv'), newline='') as f:
    rows = list(csv.DictReader(f))
  assert [r['Attack'].split(' (')[0] for r in rows] == ['FGSM', 'BIM']
  kernels = {m: result_files.load_kernel_params(result_files.kernel_dir('mnist', results),
                                                m == 'RCE', 'mnist')[0] for m in MODELS}
  checked = 0
  for row, attack in zip(rows, ('fgsm', 'bim')):
    for model in MODELS:
      directory = result_files.attack_dir(attack, 'mnist', model == 'RCE', results_dir=results)
      data = result_files.load_attack_round(directory, EPS_ROUND - 1)
      keep = ((data['labels_nor'] == data['labels_true'])
              & (data['labels_adv'] != data['labels_true']))
      assert int(row['kept %s' % model]) == int(keep.sum())
      k = kernels[model]
      scores = {
          'Confidence': (data['confidence_nor'], data['confidence_adv']),
          'non-ME': (data['entropy_nor'], data['entropy_adv']),
          'K-density': (log_kd(data['logits_nor'], data['labels_nor'], k['points'],
                               k['point_labels'], float(k['sigma2'])),
                        log_kd(data['logits_adv'], data['labels_adv'], k['points'],
                               k['point_labels'], float(k['sigma2'])))}
      for metric, (nor, adv) in scores.items():
        cell = row['%s %s' % (metric, model)]
        if keep.sum() == 0:
          assert cell == 'nan', (attack, model, metric, cell)
          continue
        y = np.r_[np.ones(keep.sum()), np.zeros(keep.sum())]
        expected = roc_auc_score(y, np.r_[nor[keep], adv[keep]])
        assert float(cell) == pytest.approx(expected, abs=1e-6), (attack, model, metric)
        checked += 1
  assert checked >= 6


def test_roc_pngs_and_thresholding_numbers(pipeline):
  assert pipeline['detect'].returncode == 0, describe(pipeline['detect'])
  results = pipeline['results']
  out_dir = os.path.join(results, 'detect_mnist')
  for attack in ('fgsm', 'bim'):
    assert is_png(os.path.join(out_dir, 'roc_%s.png' % attack)), attack
  with open(os.path.join(out_dir, 'table2.md')) as f:
    _, rows = markdown_table(f.read(), '| Attack | Model |')
  # Recompute the thresholding test of FGSM: accept when K-density >= training median.
  for row in rows:
    if row[0] != 'FGSM':
      continue
    model = row[1]
    k, _ = result_files.load_kernel_params(result_files.kernel_dir('mnist', results),
                                           model == 'RCE', 'mnist')
    directory = result_files.attack_dir('fgsm', 'mnist', model == 'RCE', results_dir=results)
    data = result_files.load_attack_round(directory, EPS_ROUND - 1)
    for side, cells in (('nor', row[2:4]), ('adv', row[4:6])):
      pred = data['labels_' + side]
      score = log_kd(data['logits_' + side], pred, k['points'], k['point_labels'],
                     float(k['sigma2']))
      accepted = score >= np.log(k['medians'][pred])
      assert float(cells[0]) == pytest.approx(accepted.mean(), abs=6e-5), (model, side, row)
      if accepted.any():
        acc = np.mean(pred[accepted] == data['labels_true'][accepted])
        assert float(cells[1]) == pytest.approx(acc, abs=6e-5), (model, side, row)
      else:
        assert cells[1] == '-', row


def test_tsne_writes_a_png(pipeline):
  proc = pipeline['tsne']
  assert proc.returncode == 0, describe(proc)
  assert is_png(pipeline['tsne_out'])
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  height, width = matplotlib.image.imread(pipeline['tsne_out']).shape[:2]
  assert width > 1.6 * height, (width, height)  # two panels side by side (CE, RCE)


def test_kernel_para_files(pipeline):
  results = pipeline['results']
  kdir = result_files.kernel_dir('mnist', results)
  _, train_labels = dataset_input.load_arrays('mnist', pipeline['train_file'], 1500)
  for model in MODELS:
    proc = pipeline['kernel_procs'][model]
    assert 'wrote kernel parameters of %d training features' % len(train_labels) in proc.stdout
    features = np.loadtxt(os.path.join(kdir, 'training_logits_' + model))
    labels = np.loadtxt(os.path.join(kdir, 'training_labels_' + model)).astype(np.int64)
    assert features.shape == (len(train_labels), 64)
    np.testing.assert_array_equal(labels, train_labels)
    with np.load(os.path.join(kdir, 'kernel_%s.npz' % model), allow_pickle=False) as data:
      k = {name: data[name] for name in data.files}
    for name in ('points', 'point_labels', 'subset_points', 'subset_labels',
                 'subset_medians', 'medians', 'sigma2'):
      assert name in k, (model, sorted(k))
    sigma2 = (0.1 if model == 'RCE' else 1.0) / 0.26
    assert float(k['sigma2']) == pytest.approx(sigma2)
    assert k['points'].shape[1] == 64 and k['subset_points'].shape[1] == 64
    for c in range(10):
      available = int(np.sum(labels == c))
      n_points = int(np.sum(k['point_labels'] == c))
      assert n_points == min(1000, available), (model, c)
      assert int(np.sum(k['subset_labels'] == c)) == min(100, n_points), (model, c)
    # The kernel points are training features of their class; the subset is drawn from them.
    for pts, pl, pool, pool_labels in ((k['points'], k['point_labels'], features, labels),
                                       (k['subset_points'], k['subset_labels'], k['points'],
                                        k['point_labels'])):
      for c in range(10):
        a, b = pts[pl == c], pool[pool_labels == c]
        nearest = np.sqrt(np.min(np.sum(np.square(a[:, None, :] - b[None]), axis=-1), axis=1))
        assert np.all(nearest < 1e-4 * (1 + np.abs(b).max())), (model, c, nearest.max())
    # Medians: per class, the median K-density of its training features.
    for key, (pts, pl) in (('subset_medians', (k['subset_points'], k['subset_labels'])),
                           ('medians', (k['points'], k['point_labels']))):
      dens = np.exp(log_kd(features, labels, pts, pl, sigma2))
      expected = np.array([np.median(dens[labels == c]) for c in range(10)])
      np.testing.assert_allclose(k[key], expected, rtol=1e-3, err_msg='%s %s' % (model, key))


def _f2_numpy(features, targets, kernel):
  sub, sub_labels = kernel['subset_points'], kernel['subset_labels']
  sigma2 = float(kernel['sigma2'])
  out = np.empty(len(features))
  for i, (z, t) in enumerate(zip(np.asarray(features, np.float64), targets)):
    d2 = np.sum(np.square(np.asarray(sub[sub_labels == t], np.float64) - z), axis=1)
    density = np.mean(np.exp(-d2 / sigma2))
    out[i] = -np.log(1e-30 + density) + np.log(kernel['subset_medians'][t])
  return out


def test_cw_wb_successes_have_f2_nonpositive_and_reach_target(pipeline):
  reached_any, success_any = False, False
  for model in MODELS:
    proc = pipeline['wb'][model]
    assert proc.returncode == 0, describe(proc)
    directory = result_files.attack_dir('carliniL2_specific', 'mnist', model == 'RCE',
                                        results_dir=pipeline['wb_results'])
    summary = result_files.load_summary(directory)
    assert summary['num_rounds'] == 1 and summary['eps'] == [None]
    stats = summary['attack_stats']
    data = result_files.load_attack_round(directory, 0)
    kernel, _ = result_files.load_kernel_params(
        result_files.kernel_dir('mnist', pipeline['wb_results']), model == 'RCE', 'mnist')
    targets = attack_runner.random_targets(data['labels_true'], 0, 10)
    assert np.all(targets != data['labels_true'])
    reached = data['labels_adv'] == targets
    f2 = _f2_numpy(data['logits_adv'], targets, kernel)
    n = len(targets)
    assert stats['target_reached_rate'] == pytest.approx(reached.mean(), abs=1e-9), model
    # success = target reached and f2 <= 0 (borderline f2 within 1e-3 may go either way)
    lo = np.sum(reached & (f2 <= -1e-3)) / n
    hi = np.sum(reached & (f2 <= 1e-3)) / n
    assert lo - 1e-9 <= stats['success_rate'] <= hi + 1e-9, (model, stats, f2, reached)
    l2 = data['L2_distance']
    adv = np.load(os.path.join(directory, 'adv_img.npy'))[0]
    nor = np.load(os.path.join(directory, 'nor_img.npy'))
    np.testing.assert_allclose(
        l2, np.sqrt(np.sum(np.square(adv - nor).reshape(n, -1), axis=1)), rtol=1e-5,
        atol=1e-6)
    if reached.any():
      reached_any = True
      success_any |= stats['success_rate'] > 0
      f2r = f2[reached]
      assert (np.mean(f2r > 1e-3) - 1e-9 <= stats['ratio_f2_positive']
              <= np.mean(f2r > -1e-3) + 1e-9), (model, stats, f2r)
      assert stats['mean_l2_distortion'] == pytest.approx(l2[reached].mean(), rel=1e-5)
      # a reached target means a changed image
      assert np.all(l2[reached] > 0)
    else:
      assert stats['ratio_f2_positive'] is None and stats['mean_l2_distortion'] is None
    # images C&W never made successful come back unchanged: L2 0, the normal prediction
    unchanged = l2 == 0
    np.testing.assert_array_equal(data['labels_adv'][unchanged],
                                  data['labels_nor'][unchanged])
  assert reached_any and success_any, 'the white-box attack never succeeded: check is vacuous'


def test_f2_graph_function_matches_the_formula(pipeline):
  """attack_runner._f2_fn (what C&W-wb optimizes and tests for success) equals the
  numpy formula on the saved adversarial images of each model."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import resnet_model  # pylint: disable=g-import-not-at-top
  from rce.model import restored_model  # pylint: disable=g-import-not-at-top
  tf.compat.v1.disable_eager_execution()
  for model_name in MODELS:
    rce = model_name == 'RCE'
    directory = result_files.attack_dir('carliniL2_specific', 'mnist', rce,
                                        results_dir=pipeline['wb_results'])
    if not result_files.is_complete(directory):
      pytest.fail('no white-box results for %s: %s' % (model_name,
                                                       describe(pipeline['wb'][model_name])))
    kernel, _ = result_files.load_kernel_params(
        result_files.kernel_dir('mnist', pipeline['wb_results']), rce, 'mnist')
    adv = np.load(os.path.join(directory, 'adv_img.npy'))[0]
    labels = np.loadtxt(os.path.join(directory, 'labels_true')).astype(np.int64)
    targets = attack_runner.random_targets(labels, 0, 10)
    hps = resnet_model.default_hparams(num_residual_units=1, RCE_train=rce)
    model = restored_model.RestoredModel(hps, 'mnist', pipeline['models'][model_name])
    try:
      with model.graph.as_default():
        f2_fn = attack_runner._f2_fn(model.model_fn, kernel)  # pylint: disable=protected-access
        target_ph = tf.compat.v1.placeholder(tf.float32, [None, 10])
        f2_t = f2_fn(model.images, target_ph)
      got = model.sess.run(f2_t, {model.images: adv, target_ph: np.eye(10)[targets]})
      _, features = model.outputs(adv)
    finally:
      model.close()
    np.testing.assert_allclose(got, _f2_numpy(features, targets, kernel), rtol=1e-3,
                               atol=1e-3, err_msg=model_name)


# ---- errors ----------------------------------------------------------------------------


def _copy_results(pipeline, dest, attacks=('fgsm',), kernel=True):
  os.makedirs(dest, exist_ok=True)
  for attack in attacks:
    shutil.copytree(os.path.join(pipeline['results'], '%s_mnist' % attack),
                    os.path.join(dest, '%s_mnist' % attack))
  if kernel:
    shutil.copytree(result_files.kernel_dir('mnist', pipeline['results']),
                    result_files.kernel_dir('mnist', dest))
  return dest


def test_detect_without_kernel_files_names_the_command(pipeline, tmp_path):
  results = _copy_results(pipeline, str(tmp_path / 'results'), kernel=False)
  proc = run_script(['test_adv.py', '--mode=detect', '--dataset=mnist',
                     '--results_dir=%s' % results, '--eps_round=%d' % EPS_ROUND], timeout=200)
  assert proc.returncode != 0, describe(proc)
  assert 'error:' in proc.stderr and 'kernel_para' in proc.stderr, describe(proc)
  assert 'kernel_CE.npz' in proc.stderr or 'kernel_RCE.npz' in proc.stderr, describe(proc)
  assert not os.path.exists(os.path.join(results, 'detect_mnist', 'table2.md'))


def test_eps_round_that_does_not_exist_names_the_rounds(pipeline, tmp_path):
  results = _copy_results(pipeline, str(tmp_path / 'results'))
  for bad in (11, 0):
    with pytest.raises(result_files.ResultsError) as err:
      detect_report.detect(results, 'mnist', bad)
    message = str(err.value)
    assert 'round %d does not exist' % bad in message, message
    assert '1..10' in message and '0.02' in message and '0.2' in message, message
  assert not os.path.exists(os.path.join(results, 'detect_mnist', 'table2.md'))


def test_truncated_result_file_is_named(pipeline, tmp_path):
  results = _copy_results(pipeline, str(tmp_path / 'results'))
  path = os.path.join(results, 'fgsm_mnist', 'RCE', 'confidence_adv')
  with open(path) as f:
    lines = f.readlines()
  with open(path, 'w') as f:
    f.writelines(lines[:-1])
  with pytest.raises(result_files.ResultsError) as err:
    detect_report.detect(results, 'mnist', EPS_ROUND)
  message = str(err.value)
  assert 'confidence_adv' in message and os.path.join('fgsm_mnist', 'RCE') in message, message
  assert '%d rows' % (len(lines) - 1) in message and 'expected %d' % len(lines) in message


def test_results_of_another_dataset_are_rejected(pipeline, tmp_path):
  results = _copy_results(pipeline, str(tmp_path / 'results'))
  os.rename(os.path.join(results, 'fgsm_mnist'), os.path.join(results, 'fgsm_cifar10'))
  with pytest.raises(result_files.ResultsError) as err:
    result_files.find_attacks(results, 'cifar10')
  assert 'mnist' in str(err.value) and 'cifar10' in str(err.value), str(err.value)
  with pytest.raises(result_files.ResultsError, match='mnist results, not cifar10'):
    detect_report.detect(results, 'cifar10', EPS_ROUND)


def test_no_kept_examples_gives_nc_not_a_number(tmp_path):
  results = str(tmp_path / 'results')
  labels = np.arange(20) % 10  # every adversarial image classified correctly: none kept
  save_hand_made_results(results, labels, {m: labels for m in MODELS},
                         {m: labels.copy() for m in MODELS}, np.random.RandomState(0))
  text, per_attack = detect_report.detect(results, 'mnist', EPS_ROUND)
  assert all(r.n_kept == 0 for r in per_attack['carliniL2'].values())
  _, rows = markdown_table(text, '| Attack | Confidence')
  assert len(rows) == 1 and rows[0][0] == 'C&W', rows
  assert rows[0][1:7] == ['n/c'] * 6, rows
  assert rows[0][7:9] == ['0', '0'], rows
  assert rows[0][9:11] == ['0.0000', '0.0000'], rows  # the row says why: the attack failed
  assert 'n/c: not computable' in text
  with open(os.path.join(results, 'detect_mnist', 'table2.csv'), newline='') as f:
    row = list(csv.DictReader(f))[0]
  assert [row[c] for c in AUC_COLUMNS] == ['nan'] * 6
  assert not os.path.exists(os.path.join(results, 'detect_mnist', 'roc_carliniL2.png'))
