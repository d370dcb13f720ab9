"""The scripts' mode bodies called directly with values, no flags: attack, shards and their
merge, the C&W retry, kernel_para, characteristics, test_nor's evaluation, t_sne, train.py's
resume; the flags each result records; and the checks of what belongs together.

Small on purpose: tens of images of the bundled digits, one eps round, the shared ResNet-8s.
"""
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from rce.attacking import attack_modes
from rce.attacking import attack_runner
from rce.detection import detector_modes
from rce.model import restored_model
from rce.flags import definitions
from rce.results import consistency
from rce.results import result_files
from rce.tables import errors
import attacks
import resnet_model

tf1 = tf.compat.v1
tf1.disable_eager_execution()

N = 20
EPS = 0.1
MODEL_FLAGS = ('dataset', 'num_residual_units', 'use_bottleneck', 'RCE_train')


# ---- the flags that change each result, declared with their definitions ----------------


def test_each_result_records_the_flags_it_recorded_before():
  """The provenance 'flags' of every result and the shards' comparison stay these sets."""
  assert definitions.result_flags('precision') == MODEL_FLAGS + (
      'eval_batch_count', 'eval_batch_size')
  assert definitions.result_flags('attack') == MODEL_FLAGS + (
      'seed', 'eval_batch_count', 'attack_method', 'eps', 'attack_batch_size', 'bim_nb_iter',
      'jsma_max_iter', 'cw_batch_size', 'cw_max_iterations', 'cw_binary_search_steps',
      'cw_learning_rate', 'cw_initial_const', 'tgsm_target')
  assert definitions.result_flags('shard') == ('num_shards', 'shard_index')
  assert definitions.result_flags('kernel_para') == MODEL_FLAGS + (
      'seed', 'eval_batch_count', 'kernel_per_class', 'kernel_subset')
  assert definitions.result_flags('characteristics') == MODEL_FLAGS + (
      'seed', 'eps_round', 'lid_k', 'lid_batch')
  # Table 6: the thresholds, and what the adaptive attacks record besides the attack's flags.
  assert definitions.result_flags('calibration') == MODEL_FLAGS + (
      'seed', 'eval_batch_count', 'attack_batch_size', 'eps_round', 'lid_k',
      'calibration_images', 'lid_reference')
  assert definitions.result_flags('adaptive') == (
      'detector', 'targeted', 'pgd_steps', 'pgd_restarts', 'lagrange_steps', 'attack_fpr')
  with pytest.raises(ValueError, match='unknown result'):
    definitions.result_flags('detect')


def test_test_adv_builds_its_settings_from_the_flags(shared_models, digits_test):
  import test_adv  # pylint: disable=g-import-not-at-top
  test_adv.define_flags()
  flags = test_adv.FLAGS
  flags.unparse_flags()
  try:
    flags(['test_adv.py', '--eval_data_path=%s' % digits_test, '--dataset=mnist',
           '--log_root=%s' % shared_models['RCE'], '--num_residual_units=1', '--RCE_train=True',
           '--attack_method=bim', '--eps=0.1', '--eval_batch_count=2', '--attack_batch_size=7',
           '--cw_max_iterations=3', '--num_shards=2', '--shard_index=1'])
    settings = test_adv._attack_settings()  # pylint: disable=protected-access
  finally:
    flags.unparse_flags()
  assert settings.num_images == 14 and settings.method == 'bim' and settings.eps == 0.1
  assert settings.source.hps.RCE_train and settings.source.hps.num_residual_units == 1
  assert settings.params.cw_overrides['max_iterations'] == 3
  assert settings.params.cw_overrides['batch_size'] is None
  assert tuple(settings.flags) == definitions.result_flags('attack')
  assert settings.flags['eps'] == 0.1 and settings.flags['attack_batch_size'] == 7
  assert settings.shard_flags == {'num_shards': 2, 'shard_index': 1}


# ---- one owner of "do these results belong together" (no TensorFlow) -------------------

RCE_ROOT, CE_ROOT = '/models/RCE', '/models/CE'
RESTORED = consistency.Restored('a' * 64, RCE_ROOT, RCE_ROOT + '/model.ckpt-200', 200)


def _summary(fingerprint='a' * 64, root=RCE_ROOT, step=200, data_sha='d' * 64, flags=None,
             model='RCE'):
  return {'model': model, 'provenance': {
      'model': {'checkpoint': '%s/model.ckpt-%d' % (root, step), 'global_step': step,
                'fingerprint': fingerprint},
      'data': [{'path': '/data/%s.bin' % data_sha[0], 'size': 10, 'sha256': data_sha}],
      'flags': dict(flags or {}), 'run_id': 'run-' + data_sha[0]}}


STALE = _summary(fingerprint='b' * 64, root=CE_ROOT, step=150)


def test_the_kernel_and_an_attack_folder_must_be_of_the_restored_model():
  consistency.check_kernel_of(_summary(), '/r/kernel_para_mnist', True, RESTORED)
  consistency.check_attack_of(_summary(), '/r/fgsm_mnist/RCE', RESTORED)
  with pytest.raises(errors.ResultsError) as err:
    consistency.check_kernel_of(STALE, '/r/kernel_para_mnist', True, RESTORED)
  assert str(err.value) == (
      '/r/kernel_para_mnist: kernel_RCE.json was made from checkpoint '
      '/models/CE/model.ckpt-150 (step 150), not from the model of --log_root=/models/RCE '
      '(/models/RCE/model.ckpt-200, step 200); rerun test_adv.py --mode=kernel_para for it')
  with pytest.raises(errors.ResultsError) as err:
    consistency.check_attack_of(STALE, '/r/fgsm_mnist/RCE', RESTORED)
  assert str(err.value) == (
      '/r/fgsm_mnist/RCE was made by checkpoint /models/CE/model.ckpt-150 (step 150), not by '
      'the model of --log_root=/models/RCE (/models/RCE/model.ckpt-200, step 200); rerun the '
      'attack')


def test_a_shard_must_be_of_the_merges_checkpoint_data_and_flags():
  flags = {'eps': 0.1, 'seed': 0, 'num_shards': 2}
  shard = _summary(flags=dict(flags, shard_index=0))
  consistency.check_shard(shard, '/s/0_of_2', 'a' * 64, [(10, 'd' * 64)], flags)
  cases = [
      (('b' * 64, [(10, 'd' * 64)], flags), '/s/0_of_2: made by checkpoint '
       '/models/RCE/model.ckpt-200 (step 200), not by the model of --log_root; rerun the shard'),
      (('a' * 64, [(10, 'e' * 64)], flags), '/s/0_of_2: attacked other data than '
       '--eval_data_path'),
      (('a' * 64, [(10, 'd' * 64)], dict(flags, eps=0.2, seed=1)), '/s/0_of_2: made with '
       'other flags (--eps=0.1, --seed=0) than this merge')]
  for (fingerprint, data, expected_flags), message in cases:
    with pytest.raises(errors.ResultsError) as err:
      consistency.check_shard(shard, '/s/0_of_2', fingerprint, data, expected_flags)
    assert str(err.value) == message


def test_the_folders_of_one_table_must_belong_together():
  kernels = {'CE': _summary(model='CE'), 'RCE': _summary()}
  table = {'fgsm': {'CE': ('/r/fgsm_mnist/CE', _summary(model='CE')),
                    'RCE': ('/r/fgsm_mnist/RCE', _summary())}}
  consistency.check_table(table, kernels, '/r/kernel_para_mnist')
  stale = dict(table, fgsm=dict(table['fgsm'], RCE=('/r/fgsm_mnist/RCE', STALE)))
  with pytest.raises(errors.ResultsError) as err:
    consistency.check_table(stale, kernels, '/r/kernel_para_mnist')
  assert str(err.value) == (
      '/r/fgsm_mnist/RCE: summary.json was made by checkpoint /models/CE/model.ckpt-150 (step '
      '150), but /r/kernel_para_mnist: kernel_RCE.json by checkpoint /models/RCE/model.ckpt-200'
      ' (step 200); they are not the same RCE model: rerun the stale one (attack or '
      'kernel_para)')
  other = dict(table, fgsm=dict(table['fgsm'], RCE=('/r/fgsm_mnist/RCE',
                                                   _summary(data_sha='e' * 64))))
  with pytest.raises(errors.ResultsError) as err:
    consistency.check_table(other, kernels, '/r/kernel_para_mnist')
  assert str(err.value) == (
      "/r/fgsm_mnist/RCE: summary.json records other test data than /r/fgsm_mnist/CE "
      "(['/data/e.bin'] vs /r/fgsm_mnist/CE); one table compares attacks on the same images")
  with pytest.raises(errors.ResultsError) as err:
    consistency.check_table(table, dict(kernels, CE=_summary(data_sha='t' * 64)),
                            '/r/kernel_para_mnist')
  assert str(err.value) == ('/r/kernel_para_mnist: the CE and RCE kernels (kernel_CE.json, '
                            'kernel_RCE.json) were made from different training data')
  older = dict(table, fgsm={'RCE': ('/r/fgsm_mnist/RCE', {'model': 'RCE'})})
  with pytest.raises(errors.ResultsError, match='older version'):
    consistency.check_table(older, kernels, '/r/kernel_para_mnist')


def test_t_sne_panels_must_be_their_models_on_the_same_images():
  panels = [('CE', '/r/fgsm_mnist/CE', _summary(model='CE')),
            ('RCE', '/r/fgsm_mnist/RCE', _summary())]
  consistency.check_panels(panels)
  consistency.check_panels(panels[:1] + [('RCE', '/r/fgsm_mnist/RCE', {'model': 'RCE'})])
  with pytest.raises(errors.ResultsError) as err:
    consistency.check_panels(panels[:1] + [('RCE', '/r/fgsm_mnist/RCE', _summary(model='CE'))])
  assert str(err.value) == '/r/fgsm_mnist/RCE holds results of the CE model, not RCE'
  with pytest.raises(errors.ResultsError) as err:
    consistency.check_panels(panels[:1] + [('RCE', '/r/fgsm_mnist/RCE',
                                            _summary(data_sha='e' * 64))])
  assert str(err.value) == ('/r/fgsm_mnist/CE and /r/fgsm_mnist/RCE attacked different test '
                            'data; t-SNE compares the same images')


# ---- the modes, on the shared ResNet-8s ---------------------------------------------------


def _source(log_root, rce=True):
  return restored_model.ModelSource(
      resnet_model.default_hparams(num_residual_units=1, RCE_train=rce), 'mnist', log_root, 0)


def _attack(log_root, data, results_dir, method='fgsm', n=N, num_shards=1, shard_index=0,
            eps=EPS, **cw):
  """The settings of an attack on the first `n` test images (one eps round)."""
  overrides = {k: cw.get(k) for k in attacks.CW_SETTINGS}
  flags = {'attack_method': method, 'eps': eps, 'attack_batch_size': n, 'seed': 0}
  return attack_modes.AttackSettings(
      method=method, source=_source(log_root), data_path=data, num_images=n, eps=eps,
      params=attack_runner.AttackParams(batch_size=n, nb_iter=10, jsma_max_iter=10,
                                        tgsm_target='original', cw_overrides=overrides,
                                        seed=0),
      num_shards=num_shards, shard_index=shard_index, results_dir=results_dir, save_pwd='',
      flags=flags, shard_flags={'num_shards': num_shards, 'shard_index': shard_index})


@pytest.fixture(scope='module')
def attacked(shared_models, digits_test, tmp_path_factory):
  """FGSM (eps 0.1) on 20 images of the RCE model: whole, and as 2 shards merged."""
  base = tmp_path_factory.mktemp('modes')
  whole, sharded = str(base / 'whole'), str(base / 'sharded')
  out = attack_modes.run_attack(_attack(shared_models['RCE'], digits_test, whole))
  for index in (0, 1):
    attack_modes.run_attack(_attack(shared_models['RCE'], digits_test, sharded, num_shards=2,
                                    shard_index=index))
  merged = attack_modes.run_merge_shards(_attack(shared_models['RCE'], digits_test, sharded,
                                                 num_shards=2))
  return dict(whole=whole, out=out, sharded=sharded, merged=merged, base=str(base))


def test_run_attack_writes_the_result_folder_with_its_flags(attacked):
  out = attacked['out']
  assert out == result_files.attack_dir('fgsm', 'mnist', True, results_dir=attacked['whole'])
  summary = result_files.load_verified_summary(out)
  assert summary['num_examples'] == N and summary['eps'] == [EPS]
  assert summary['provenance']['flags'] == {'attack_method': 'fgsm', 'eps': EPS,
                                            'attack_batch_size': N, 'seed': 0,
                                            'num_shards': 1, 'shard_index': 0}
  nor, adv = np.load(os.path.join(out, 'nor_img.npy')), np.load(os.path.join(out,
                                                                           'adv_img.npy'))
  assert adv.shape == (1,) + nor.shape and nor.shape[0] == N
  assert np.abs(adv[0] - nor).max() == pytest.approx(EPS, abs=1e-5)


def test_two_shards_merged_equal_the_whole_attack(attacked):
  merged = attacked['merged']
  summary = result_files.load_verified_summary(merged)
  assert summary['num_examples'] == N and len(summary['merged_from']) == 2
  assert 'shard_index' not in summary['provenance']['flags']
  for name in result_files.TEXT_FILES:
    np.testing.assert_allclose(np.loadtxt(os.path.join(attacked['out'], name)),
                               np.loadtxt(os.path.join(merged, name)), atol=1e-5,
                               err_msg=name)


def test_merge_refuses_one_shard_and_shards_of_other_flags(attacked, shared_models,
                                                           digits_test):
  with pytest.raises(ValueError, match='needs --num_shards'):
    attack_modes.run_merge_shards(_attack(shared_models['RCE'], digits_test,
                                          attacked['sharded']))
  other = _attack(shared_models['RCE'], digits_test, attacked['sharded'], num_shards=2,
                  eps=0.2)
  with pytest.raises(errors.ResultsError, match=r'0_of_2: made with other flags \(--eps=0.1\)'):
    attack_modes.run_merge_shards(other)


def test_cw_out_of_memory_retries_at_half_the_batch_in_a_fresh_graph(
    shared_models, digits_test, tmp_path, monkeypatch):
  """With a GPU the C&W batch is all images, halved on each out-of-memory error; the retry
  restores the model into a new graph after closing the one that failed."""
  restored, calls = [], []
  real_restore, real_run = restored_model.restore, attack_runner.CWAttack.run

  def restore(source):
    restored.append(real_restore(source))
    return restored[-1]

  def run(self, *args):
    calls.append(self.stages[0].batch_size)
    if len(calls) == 1:
      raise tf.errors.ResourceExhaustedError(None, None, 'OOM when allocating tensor')
    return real_run(self, *args)

  monkeypatch.setattr(restored_model, 'restore', restore)
  monkeypatch.setattr(attack_runner.CWAttack, 'run', run)
  monkeypatch.setattr(attack_modes.placement, 'available_gpus', lambda: 1)
  settings = _attack(shared_models['RCE'], digits_test, str(tmp_path), 'carliniL2', n=4,
                     max_iterations=3, binary_search_steps=1)
  out = attack_modes.run_attack(settings)
  assert calls == [4, 2] and len(restored) == 2
  first, second = restored
  assert first.sess._closed and first.graph is not second.graph  # pylint: disable=protected-access
  summary = result_files.load_verified_summary(out)
  assert summary['attack_stats']['cw_settings'][0]['batch_size'] == 2
  assert summary['num_examples'] == 4


def test_kernel_para_then_characteristics_of_the_attack_folders(attacked, shared_models,
                                                                digits_train):
  results = attacked['whole']
  kernel_flags = {'kernel_per_class': 5, 'kernel_subset': 3}
  kernel_dir = detector_modes.run_kernel_para(detector_modes.KernelSettings(
      source=_source(shared_models['RCE']), data_path=digits_train, num_images=100,
      per_class=5, subset=3, seed=0, results_dir=results, flags=kernel_flags))
  assert kernel_dir == result_files.kernel_dir('mnist', results)
  kernel, kernel_summary = result_files.load_kernel_params(kernel_dir, True, 'mnist')
  assert kernel_summary['num_examples'] == 100
  assert kernel_summary['provenance']['flags'] == kernel_flags
  assert 0 < len(kernel['subset_points']) <= 30  # at most 3 per class
  chars_flags = {'eps_round': 1, 'lid_k': 3, 'lid_batch': 10}
  settings = detector_modes.CharacteristicsSettings(
      source=_source(shared_models['RCE']), results_dir=results, eps_round=1, lid_k=3,
      lid_batch=10, seed=0, flags=chars_flags)
  assert detector_modes.run_characteristics(settings) == {'fgsm': attacked['out']}
  folder = result_files.characteristics_dir(attacked['out'])
  summary = result_files.load_verified_summary(folder)
  assert summary['provenance']['flags'] == chars_flags
  assert summary['kernel_run_id'] == result_files.run_id(kernel_summary)
  assert summary['attack_run_id'] == result_files.run_id(
      result_files.load_summary(attacked['out']))
  with np.load(os.path.join(folder, result_files.CHARACTERISTICS_ARRAYS)) as arrays:
    assert arrays['lid_normal'].shape[0] == N and arrays['noisy_feature'].shape == (N, 64)
  # the CE model's checkpoint restored as if it were RCE: the kernel is not of it
  wrong = settings._replace(source=_source(shared_models['CE']))
  with pytest.raises(errors.ResultsError, match='kernel_RCE.json was made from checkpoint'):
    detector_modes.run_characteristics(wrong)


def test_test_nor_evaluates_once_with_the_flags_it_records(shared_models, digits_test,
                                                           tmp_path):
  import test_nor  # pylint: disable=g-import-not-at-top
  eval_dir = str(tmp_path / 'eval')
  flags = {'eval_batch_count': 1, 'eval_batch_size': 50}
  precision = test_nor.evaluate_checkpoints(test_nor.EvalSettings(
      hps=_source(shared_models['CE'], False).hps, dataset='mnist',
      log_root=shared_models['CE'], num_gpus=0, data_path=digits_test, batch_count=1,
      batch_size=50, eval_dir=eval_dir, once=True, interval_secs=1, flags=flags))
  summary = result_files.load_verified_summary(eval_dir, result_files.CLEAN_RESULT)
  assert summary['precision'] == pytest.approx(precision) and summary['images'] == 50
  assert summary['provenance']['flags'] == flags and 0.0 <= precision <= 1.0


def test_t_sne_writes_the_panels_of_the_folders_present(attacked, tmp_path):
  import t_sne  # pylint: disable=g-import-not-at-top
  from tests.helpers import is_png  # pylint: disable=g-import-not-at-top
  out = str(tmp_path / 'tsne.png')
  missing = str(tmp_path / 'no_such_folder')
  assert t_sne.write_tsne({'CE': missing, 'RCE': attacked['out']}, 'fgsm', out, 1, 50) == out
  assert is_png(out)
  with pytest.raises(errors.ResultsError, match='no attack results in %s' % missing):
    t_sne.write_tsne({'CE': missing}, 'fgsm', out, 1, 50)


def test_train_resumed_at_its_last_step_has_nothing_to_do(shared_models, digits_train,
                                                          tmp_path):
  import train  # pylint: disable=g-import-not-at-top
  from tests.helpers import SHARED_TRAIN_STEPS  # pylint: disable=g-import-not-at-top
  log_root = str(tmp_path / 'RCE')
  shutil.copytree(shared_models['RCE'], log_root)
  before = sorted(os.listdir(log_root))
  step = train.train(train.TrainSettings(
      hps=_source(log_root).hps, dataset='mnist', data_path=digits_train, test_path='',
      log_root=log_root, summary_dir=os.path.join(log_root, 'train'), num_gpus=0,
      total_steps=SHARED_TRAIN_STEPS, batch_size=16, precision='fp32', lr_schedule=None,
      seed=0, checkpoint_steps=100, summary_steps=100, log_steps=100, test_every_steps=0,
      test_batches=1))
  assert step == SHARED_TRAIN_STEPS and sorted(os.listdir(log_root)) == before
  message = str(train.stopped('the training loss became NaN', str(tmp_path / 'empty')))
  assert message.startswith('the training loss became NaN; training stopped')
  assert 'no checkpoint was written, so a rerun starts afresh' in message
