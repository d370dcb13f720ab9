"""test_adv.py --mode=attack from the command line (issue "attacks", SPEC.md section 8).

The README's attack command on the bundled digits and a briefly trained ResNet-8 (shared
with test_detect_pipeline.py: trained once per session), its output files checked against
the images they were computed from; the graph built once (in-process); the error cases; C&W.
"""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import attack_args, describe, run_parallel, run_script  # pylint: disable=g-bad-import-order
from rce.attacking import attack_runner  # pylint: disable=g-bad-import-order
import attacks
import dataset_input
from rce.detection import detection
from rce.model import restored_model
import resnet_model
from rce.results import result_files

tf1 = tf.compat.v1
tf1.disable_eager_execution()

N = 40
EPS = [round(0.02 * i, 2) for i in range(1, 11)]
ORIGINAL_FILES = ('entropy_nor', 'entropy_adv', 'confidence_nor', 'confidence_adv',
                  'logits_nor', 'logits_adv', 'labels_nor', 'labels_adv', 'labels_true',
                  'L2_distance', 'nor_img.npy', 'adv_img.npy', 'summary.json')
CW_FLAGS = ['--cw_max_iterations=30', '--cw_binary_search_steps=2', '--cw_batch_size=20']


def readme_attack(test_file, log_root, n=N, batches=1, method='fgsm', units=1, extra=()):
  """The README's test_adv.py command (an RCE model) with the given paths."""
  return attack_args(test_file, log_root, True, method, n, batches, units, extra)


@pytest.fixture(scope='module')
def rce_root(shared_models):
  return shared_models['RCE']


@pytest.fixture(scope='module')
def fgsm_runs(rce_root, digits_test, tmp_path_factory):
  """The README command (cwd a fresh folder), and a --save_pwd run of 2 batches of 15."""
  cwd = str(tmp_path_factory.mktemp('attack_cwd'))
  cwd2 = str(tmp_path_factory.mktemp('attack_cwd_save_pwd'))
  save_pwd = os.path.join(str(tmp_path_factory.mktemp('save_pwd')), 'my', 'results')
  readme, saved = run_parallel(
      [readme_attack(digits_test, rce_root),
       readme_attack(digits_test, rce_root, n=15, batches=2, extra=['--save_pwd=%s' % save_pwd])],
      timeout=300, cwds=[cwd, cwd2])
  return dict(readme=readme, cwd=cwd, out=os.path.join(cwd, 'fgsm_mnist', 'RCE'),
              saved=saved, cwd2=cwd2, save_pwd=save_pwd)


def _load_text(directory, name):
  return np.loadtxt(os.path.join(directory, name))


def test_readme_attack_command_writes_every_original_file(fgsm_runs, digits_test):
  proc = fgsm_runs['readme']
  assert proc.returncode == 0, describe(proc)
  out = fgsm_runs['out']
  assert os.listdir(fgsm_runs['cwd']) == ['fgsm_mnist']
  assert os.listdir(os.path.join(fgsm_runs['cwd'], 'fgsm_mnist')) == ['RCE']
  assert sorted(os.listdir(out)) == sorted(ORIGINAL_FILES)  # no temporary files left
  assert 'wrote fgsm results (%d images, 10 rounds)' % N in proc.stdout
  shapes = {'entropy_nor': (10 * N,), 'confidence_nor': (10 * N,), 'labels_nor': (10 * N,),
            'labels_true': (10 * N,), 'logits_nor': (10 * N, 64), 'entropy_adv': (10 * N,),
            'confidence_adv': (10 * N,), 'labels_adv': (10 * N,), 'L2_distance': (10 * N,),
            'logits_adv': (10 * N, 64)}
  for name, shape in shapes.items():
    values = _load_text(out, name)
    assert values.shape == shape, name
    assert np.all(np.isfinite(values)), name
    if name.startswith('labels'):
      assert np.all(values == np.round(values)) and values.min() >= 0 and values.max() <= 9
    if name.startswith('confidence'):
      assert np.all((values >= 0.1 - 1e-6) & (values <= 1 + 1e-6)), name
    if name.startswith('entropy'):
      assert np.all((values >= -1e-9) & (values <= np.log(9) + 1e-6)), name
  nor = np.load(os.path.join(out, 'nor_img.npy'))
  adv = np.load(os.path.join(out, 'adv_img.npy'))
  assert nor.shape == (N, 28, 28, 1) and adv.shape == (10, N, 28, 28, 1)
  assert nor.dtype == np.float32 and adv.dtype == np.float32
  assert adv.min() >= -0.5 and adv.max() <= 0.5
  images, labels = dataset_input.load_arrays('mnist', digits_test, N)
  np.testing.assert_array_equal(nor, images)  # the first N test images, in file order
  # the original's layout: the normal rows once per eps round (one fixed image set)
  np.testing.assert_array_equal(_load_text(out, 'labels_true'), np.tile(labels, 10))


def test_summary_json_per_round_statistics(fgsm_runs):
  assert fgsm_runs['readme'].returncode == 0, describe(fgsm_runs['readme'])
  out = fgsm_runs['out']
  with open(os.path.join(out, 'summary.json')) as f:
    summary = json.load(f)
  assert summary['eps'] == pytest.approx(EPS)
  assert summary['num_examples'] == N and summary['num_rounds'] == 10
  assert summary['attack'] == 'fgsm' and summary['dataset'] == 'mnist'
  assert summary['model'] == 'RCE'
  labels = _load_text(out, 'labels_true').reshape(10, N)
  pred_nor = _load_text(out, 'labels_nor').reshape(10, N)
  pred_adv = _load_text(out, 'labels_adv').reshape(10, N)
  conf_adv = _load_text(out, 'confidence_adv').reshape(10, N)
  nonme_adv = _load_text(out, 'entropy_adv').reshape(10, N)
  l2 = _load_text(out, 'L2_distance').reshape(10, N)
  assert len(summary['rounds']) == 10
  for r, stats in enumerate(summary['rounds']):
    assert stats['eps'] == pytest.approx(EPS[r])
    assert stats['precision_nor'] == pytest.approx(np.mean(pred_nor[r] == labels[r]))
    assert stats['precision_adv'] == pytest.approx(np.mean(pred_adv[r] == labels[r]))
    assert stats['mean_confidence_adv'] == pytest.approx(conf_adv[r].mean(), rel=1e-6)
    assert stats['mean_non_me_adv'] == pytest.approx(nonme_adv[r].mean(), rel=1e-6)
    assert stats['mean_l2'] == pytest.approx(l2[r].mean(), rel=1e-5)
  # FGSM works: larger eps, lower adversarial precision overall
  assert summary['rounds'][-1]['precision_adv'] < summary['rounds'][0]['precision_nor']


def test_l2_and_linf_of_each_round_match_the_images(fgsm_runs):
  assert fgsm_runs['readme'].returncode == 0, describe(fgsm_runs['readme'])
  out = fgsm_runs['out']
  nor = np.load(os.path.join(out, 'nor_img.npy'))
  adv = np.load(os.path.join(out, 'adv_img.npy'))
  l2 = _load_text(out, 'L2_distance').reshape(10, N)
  for r, eps in enumerate(EPS):
    diff = adv[r] - nor
    np.testing.assert_allclose(l2[r], np.sqrt(np.sum(np.square(diff).reshape(N, -1), axis=1)),
                               rtol=1e-5, err_msg='round %d' % r)
    assert np.abs(diff).max() <= eps + 1e-6, r
    unclipped = np.abs(adv[r]) < 0.5 - 1e-6
    assert unclipped.mean() > 0.05, r
    np.testing.assert_allclose(np.abs(diff[unclipped]), eps, atol=1e-6,
                               err_msg='FGSM moves every unclipped pixel by eps, round %d' % r)


def test_save_pwd_puts_results_there_and_batches_concatenate(fgsm_runs):
  proc = fgsm_runs['saved']
  assert proc.returncode == 0, describe(proc)
  save_pwd = fgsm_runs['save_pwd']
  assert sorted(os.listdir(save_pwd)) == sorted(ORIGINAL_FILES)
  assert os.listdir(fgsm_runs['cwd2']) == []  # nothing in the default layout
  assert np.load(os.path.join(save_pwd, 'adv_img.npy')).shape == (10, 30, 28, 28, 1)
  assert _load_text(save_pwd, 'logits_adv').shape == (300, 64)
  # Two batches of 15 give the same adversarial images as the first 30 of one batch of 40.
  if fgsm_runs['readme'].returncode == 0:
    ref = np.load(os.path.join(fgsm_runs['out'], 'adv_img.npy'))[:, :30]
    np.testing.assert_allclose(np.load(os.path.join(save_pwd, 'adv_img.npy')), ref, atol=1e-6)
    np.testing.assert_allclose(_load_text(save_pwd, 'logits_nor').reshape(10, 30, 64),
                               _load_text(fgsm_runs['out'], 'logits_nor').reshape(
                                   10, N, 64)[:, :30], rtol=1e-4, atol=1e-5)


def _restored(rce_root):
  hps = resnet_model.default_hparams(num_residual_units=1, RCE_train=True)
  return restored_model.RestoredModel(hps, 'mnist', rce_root)


def test_graph_does_not_grow_across_eps_rounds(rce_root, digits_test, fgsm_runs):
  images, _ = dataset_input.load_arrays('mnist', digits_test, N)
  model = _restored(rce_root)
  try:
    params = attack_runner.AttackParams(
        batch_size=20, nb_iter=10, jsma_max_iter=20, tgsm_target='original',
        cw_overrides={'batch_size': 20, 'max_iterations': 10, 'binary_search_steps': 1},
        seed=0)
    built = {name: attack_runner.EpsAttack(model, attacks.get_attack(name), params)
             for name in ('fgsm', 'bim')}
    model.init_new_variables()
    ops_before = len(model.graph.get_operations())
    eps_list = [0.02, 0.1, 0.2]
    progress = attack_runner.Progress('test', 2 * len(images) * len(eps_list))
    rounds = {name: attack.run(images, eps_list, progress) for name, attack in built.items()}
    assert len(model.graph.get_operations()) == ops_before
    for name, adv in rounds.items():
      assert adv.shape == (3, N, 28, 28, 1), name
      for r, eps in enumerate(eps_list):
        assert np.abs(adv[r] - images).max() == pytest.approx(eps, abs=1e-5), (name, eps)
    # The CLI wrote the same FGSM rounds (eps 0.02, 0.10, 0.20 are rounds 1, 5, 10) and the
    # same normal statistics as this model computes.
    if fgsm_runs['readme'].returncode == 0:
      out = fgsm_runs['out']
      saved = np.load(os.path.join(out, 'adv_img.npy'))
      np.testing.assert_allclose(rounds['fgsm'], saved[[0, 4, 9]], atol=1e-6)
      logits, features = model.outputs(images)
      pred, conf, nonme = detection.prediction_stats(logits)
      np.testing.assert_array_equal(np.tile(pred, 10), _load_text(out, 'labels_nor'))
      np.testing.assert_allclose(np.tile(conf, 10), _load_text(out, 'confidence_nor'),
                                 rtol=1e-4)
      np.testing.assert_allclose(np.tile(nonme, 10), _load_text(out, 'entropy_nor'),
                                 rtol=1e-4, atol=1e-6)
      np.testing.assert_allclose(np.tile(features, (10, 1)), _load_text(out, 'logits_nor'),
                                 rtol=1e-4, atol=1e-5)
  finally:
    model.close()


def test_run_attack_finalizes_the_graph(rce_root, digits_test, tmp_path, monkeypatch):
  import test_adv  # pylint: disable=g-import-not-at-top
  flags = test_adv.FLAGS
  test_adv.define_flags()
  made = []

  class Recording(restored_model.RestoredModel):

    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs)
      made.append(self)

    def close(self):  # keep the session for the checks below
      pass

  monkeypatch.setattr(restored_model, 'RestoredModel', Recording)
  counts = []
  original_run = attack_runner.EpsAttack.run

  def counting_run(self, images, eps_list, progress):
    counts.append(len(self.model.graph.get_operations()))
    out = original_run(self, images, eps_list, progress)
    counts.append(len(self.model.graph.get_operations()))
    return out

  monkeypatch.setattr(attack_runner.EpsAttack, 'run', counting_run)
  save_pwd = str(tmp_path / 'out')
  flags.unparse_flags()
  try:
    flags(['test_adv.py', '--eval_data_path=%s' % digits_test, '--log_root=%s' % rce_root,
           '--dataset=mnist', '--num_gpus=1', '--num_residual_units=1', '--mode=attack',
           '--RCE_train=True', '--attack_method=bim', '--eval_batch_count=1',
           '--attack_batch_size=10', '--save_pwd=%s' % save_pwd])
    assert test_adv.run_attack() == save_pwd
  finally:
    flags.unparse_flags()
  assert len(made) == 1
  model = made[0]
  try:
    assert model.graph.finalized
    assert counts[0] == counts[1]
    with pytest.raises(RuntimeError, match='finalized'):
      with model.graph.as_default():
        tf.constant(1.0)
  finally:
    model.sess.close()
  assert np.load(os.path.join(save_pwd, 'adv_img.npy')).shape == (10, 10, 28, 28, 1)


# ---- errors: non-zero exit, 'error:' and a useful message, nothing written --------------


@pytest.fixture(scope='module')
def error_runs(rce_root, digits_test, tmp_path_factory):
  """The failing commands, run two at a time (each in a fresh cwd)."""
  base = tmp_path_factory.mktemp('attack_errors')
  empty_root = base / 'empty_log_root'
  empty_root.mkdir()
  cifar_file = base / 'cifar_as_mnist' / 'data_test.bin'
  cifar_file.parent.mkdir()
  rng = np.random.RandomState(0)
  records = rng.randint(0, 256, size=(20, 3073)).astype(np.uint8)
  records[:, 0] = rng.randint(0, 10, 20)
  records.tofile(str(cifar_file))
  cases = {
      'no_checkpoint': readme_attack(digits_test, empty_root),
      'wrong_units': readme_attack(digits_test, rce_root, units=2),
      'wrong_format': readme_attack(str(cifar_file), rce_root),
      'unknown_attack': readme_attack(str(base / 'missing.bin'), empty_root,
                                      method='deepfool'),
  }
  cwds = {name: base / ('cwd_' + name) for name in cases}
  for cwd in cwds.values():
    cwd.mkdir()
  procs = run_parallel(list(cases.values()), timeout=300,
                       cwds=[str(cwds[name]) for name in cases])
  return {name: (proc, str(cwds[name])) for name, proc in zip(cases, procs)}


def _assert_clean_error(run, *needles):
  proc, cwd = run
  assert proc.returncode != 0, describe(proc)
  assert 'error:' in proc.stderr, describe(proc)
  for needle in needles:
    assert needle in proc.stderr, (needle, describe(proc))
  assert not os.path.exists(os.path.join(cwd, 'fgsm_mnist')), describe(proc)
  assert os.listdir(cwd) == [], os.listdir(cwd)
  assert 'Traceback' not in proc.stderr, describe(proc)


def test_missing_checkpoint_is_a_clear_error(error_runs):
  _assert_clean_error(error_runs['no_checkpoint'], 'no checkpoint', 'empty_log_root')


def test_checkpoint_of_another_depth_is_a_clear_error(error_runs):
  _assert_clean_error(error_runs['wrong_units'], 'does not match', '--num_residual_units')


def test_data_file_of_the_wrong_format_is_a_clear_error(error_runs):
  _assert_clean_error(error_runs['wrong_format'], 'data_test.bin', 'not a whole number',
                      'mnist')


def test_unknown_attack_method_is_rejected_listing_the_names(error_runs):
  proc, cwd = error_runs['unknown_attack']
  assert proc.returncode != 0, describe(proc)
  assert 'deepfool' in proc.stderr, describe(proc)
  for name in attacks.ATTACK_NAMES:
    assert name in proc.stderr, (name, describe(proc))
  # rejected while parsing the flags: the data file and checkpoint were never looked at
  assert 'no data file' not in proc.stderr and 'no checkpoint' not in proc.stderr
  assert 'Restoring parameters' not in proc.stderr
  assert os.listdir(cwd) == []


# ---- C&W via the CLI ------------------------------------------------------------------


def test_carlini_cli_writes_one_round_and_success_rate(rce_root, digits_test, tmp_path):
  n = 20
  proc = run_script(readme_attack(digits_test, rce_root, n=n, method='carliniL2',
                                  extra=CW_FLAGS + ['--results_dir=%s' % tmp_path]),
                    cwd=str(tmp_path), timeout=300)
  assert proc.returncode == 0, describe(proc)
  out = result_files.attack_dir('carliniL2', 'mnist', True, results_dir=str(tmp_path))
  assert sorted(os.listdir(out)) == sorted(ORIGINAL_FILES)
  adv = np.load(os.path.join(out, 'adv_img.npy'))
  nor = np.load(os.path.join(out, 'nor_img.npy'))
  assert adv.shape == (1, n, 28, 28, 1)
  assert adv.min() >= -0.5 and adv.max() <= 0.5
  with open(os.path.join(out, 'summary.json')) as f:
    summary = json.load(f)
  assert summary['num_rounds'] == 1 and summary['eps'] == [None]
  assert len(summary['rounds']) == 1
  rate = summary['attack_stats']['success_rate']
  # The flags given win over the attack's defaults (the original's); the summary says so.
  assert summary['attack_stats']['cw_settings'] == [{
      'batch_size': 20, 'max_iterations': 30, 'binary_search_steps': 2, 'initial_const': 1.0,
      'confidence': 0.0, 'learning_rate': 0.01}]
  assert ('from the command line: --cw_batch_size, --cw_binary_search_steps, '
          '--cw_max_iterations') in proc.stderr, describe(proc)
  for name in ('labels_adv', 'L2_distance', 'entropy_adv', 'confidence_adv'):
    assert _load_text(out, name).shape == (n,), name
  assert _load_text(out, 'logits_adv').shape == (n, 64)
  # Unsuccessful examples come back unchanged; successful ones moved to their target.
  l2 = _load_text(out, 'L2_distance')
  changed = l2 > 0
  assert rate == pytest.approx(changed.mean())
  targets = attack_runner.random_targets(_load_text(out, 'labels_true').astype(int), 0, 10)
  reached = _load_text(out, 'labels_adv') == targets
  assert np.sum(changed & ~reached) <= 1, (changed, reached)  # margin-0 ties aside
  np.testing.assert_array_equal(adv[0][~changed], nor[~changed])
