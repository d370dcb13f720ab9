"""Attacks, kernel parameters and detection of a trained model (README: "The paper's commands").

  python test_adv.py --eval_data_path='mnist_dataset/data_test.bin' \\
    --log_root=models_mnist/resnet32 --dataset='mnist' --num_gpus=1 --num_residual_units=5 \\
    --Optimizer='mom' --mode=attack --RCE_train=True --attack_method='fgsm' --eval_batch_count=5

Modes:
  attack       attacks --eval_batch_count batches of --attack_batch_size test images, sweeping
               eps 0.02..0.20 for the eps attacks (C&W runs once); writes the original's files
               into {attack}_{dataset}/{RCE|CE}/ under --results_dir, or --save_pwd. Table
               6's L-inf PGD attacks (pgd_ce, pgd_cw, pgd_hc ignore the detector;
               pgd_lagrangian, pgd_selective, pgd_orthogonal attack --detector, after
               calibrate) sweep the data set's adaptive eps list (MNIST 0.1, 0.2, 0.3),
               untargeted or --targeted, into adaptive_{dataset}/{run}/{RCE|CE}/.
  kernel_para  features of --eval_batch_count batches of 100 training images
               (--train_data_path) -> kernel_para_{dataset}/ (kernel points, medians).
  calibrate    for one model, after kernel_para: the K-density, Mahalanobis and LID detectors'
               thresholds at 1 / 5 / 50 % false positives on --calibration_images clean test
               images after the attacked ones -> thresholds_{dataset}/{RCE|CE}/, which the
               adaptive attacks (--attack_method=pgd_*, Table 6) and detect read.
  characteristics
               for one model, every attack result folder of it under --results_dir: LID
               (Ma et al.) and Mahalanobis (Lee et al.) characteristics of the normal,
               adversarial (--eps_round) and noisy images -> {attack folder}/characteristics/.
  detect       the AUC table (paper's Table 2), ROC curves and the thresholding test of every
               attack result under --results_dir, for CE and RCE side by side; with
               characteristics also the LID and Mahalanobis columns and Tables 4 and 5.
  merge_shards joins the --num_shards shards of an attack (each run as --mode=attack
               --num_shards=N --shard_index=I, e.g. by a cluster's array job) into its
               ordinary result folder, after checking they come from the same checkpoint,
               data and flags.
"""
from absl import logging

import attacks
from rce.attacking import adaptive_runner
from rce.attacking import attack_modes
from rce.attacking import attack_runner
from rce.detection import calibration
from rce.detection import detector_modes
from rce.model import restored_model
from rce.flags import definitions
from rce.flags import strict
from rce.reports import detect_report
from rce.tables import attack_names

FLAGS = definitions.FLAGS
MODES = ('attack', 'kernel_para', 'calibrate', 'detect', 'merge_shards', 'characteristics')


def define_flags():
  definitions.define_base_flags()
  definitions.define_eval_flags()
  definitions.define_attack_flags()


def _source():
  return restored_model.ModelSource(definitions.hparams_from_flags(), FLAGS.dataset,
                                    FLAGS.log_root, FLAGS.num_gpus)


def _attack_flags():
  """The flags that change the attack's result (Table 6's attacks: their own too)."""
  flags = definitions.flag_values('attack')
  if attack_names.info(FLAGS.attack_method).adaptive:
    flags.update(definitions.flag_values('adaptive'))
  return flags


def _attack_settings():
  """The attack of the flags (and the merge of its shards) as immutable values."""
  return attack_modes.AttackSettings(
      method=FLAGS.attack_method, source=_source(), data_path=FLAGS.eval_data_path,
      num_images=FLAGS.eval_batch_count * FLAGS.attack_batch_size, eps=FLAGS.eps,
      params=attack_runner.AttackParams(
          batch_size=FLAGS.attack_batch_size, nb_iter=FLAGS.bim_nb_iter,
          jsma_max_iter=FLAGS.jsma_max_iter, tgsm_target=FLAGS.tgsm_target,
          cw_overrides={k: FLAGS['cw_' + k].value for k in attacks.CW_SETTINGS},
          seed=FLAGS.seed,
          adaptive=adaptive_runner.AdaptiveParams(
              detector=FLAGS.detector, targeted=FLAGS.targeted, steps=FLAGS.pgd_steps,
              restarts=FLAGS.pgd_restarts, lagrange_steps=FLAGS.lagrange_steps,
              attack_fpr=FLAGS.attack_fpr)),
      num_shards=FLAGS.num_shards, shard_index=FLAGS.shard_index,
      results_dir=FLAGS.results_dir, save_pwd=FLAGS.save_pwd,
      flags=_attack_flags(), shard_flags=definitions.flag_values('shard'))


def run_attack():
  """--mode=attack: the attacked images -> {attack}_{dataset}/{RCE|CE}/ (or a shard)."""
  definitions.require_flags('test_adv.py --mode=attack', 'eval_data_path', 'log_root')
  return attack_modes.run_attack(_attack_settings())


def run_merge_shards():
  """--mode=merge_shards: the --num_shards shard folders -> the ordinary result folder."""
  definitions.require_flags('test_adv.py --mode=merge_shards', 'eval_data_path', 'log_root')
  return attack_modes.run_merge_shards(_attack_settings())


def run_kernel_para():
  """--mode=kernel_para: training features -> kernel points and per-class medians."""
  definitions.require_flags('test_adv.py --mode=kernel_para', 'log_root')
  pattern = FLAGS.train_data_path or FLAGS.eval_data_path
  if not pattern:
    raise ValueError('test_adv.py --mode=kernel_para needs --train_data_path (the training '
                     'images whose features make the kernel)')
  if not FLAGS.train_data_path:
    logging.info('--train_data_path not given: taking the training images from '
                 '--eval_data_path=%s', pattern)
  return detector_modes.run_kernel_para(detector_modes.KernelSettings(
      source=_source(), data_path=pattern, num_images=FLAGS.eval_batch_count * 100,
      per_class=FLAGS.kernel_per_class, subset=FLAGS.kernel_subset, seed=FLAGS.seed,
      results_dir=FLAGS.results_dir, flags=definitions.flag_values('kernel_para')))


def _detector_settings():
  return calibration.DetectorSettings(lid_k=FLAGS.lid_k, lid_reference=FLAGS.lid_reference,
                                      seed=FLAGS.seed)


def run_calibrate():
  """--mode=calibrate: the detectors' thresholds on clean test images after the attacked
  ones -> thresholds_{dataset}/{RCE|CE}/."""
  definitions.require_flags('test_adv.py --mode=calibrate', 'eval_data_path', 'log_root')
  return detector_modes.run_calibrate(detector_modes.CalibrationSettings(
      source=_source(), data_path=FLAGS.eval_data_path,
      attacked=FLAGS.eval_batch_count * FLAGS.attack_batch_size,
      num_images=FLAGS.calibration_images, detectors=_detector_settings(),
      eps_round=FLAGS.eps_round, results_dir=FLAGS.results_dir,
      flags=definitions.flag_values('calibration')))


def run_characteristics():
  """--mode=characteristics: LID and Mahalanobis characteristics of every attack folder of
  this model under --results_dir, written into {attack folder}/characteristics/."""
  definitions.require_flags('test_adv.py --mode=characteristics', 'log_root')
  return detector_modes.run_characteristics(detector_modes.CharacteristicsSettings(
      source=_source(), results_dir=FLAGS.results_dir, eps_round=FLAGS.eps_round,
      lid_k=FLAGS.lid_k, lid_batch=FLAGS.lid_batch, seed=FLAGS.seed,
      flags=definitions.flag_values('characteristics')))


def run_detect():
  """--mode=detect: Table 2, ROC curves and the thresholding test."""
  text, _ = detect_report.detect(FLAGS.results_dir, FLAGS.dataset, FLAGS.eps_round,
                                 auc_ties=FLAGS.auc_ties)
  print(text)
  return text


def main():
  definitions.check_mode(MODES, 'test_adv.py')
  {'attack': run_attack, 'kernel_para': run_kernel_para, 'calibrate': run_calibrate,
   'detect': run_detect,
   'merge_shards': run_merge_shards,
   'characteristics': run_characteristics}[FLAGS.mode or 'attack']()


if __name__ == '__main__':
  strict.run_script(define_flags, main)
