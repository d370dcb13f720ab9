"""Attacks, kernel parameters and detection of a trained model (README: "The paper's commands").

  python test_adv.py --eval_data_path='mnist_dataset/data_test.bin' \\
    --log_root=models_mnist/resnet32 --dataset='mnist' --num_gpus=1 --num_residual_units=5 \\
    --Optimizer='mom' --mode=attack --RCE_train=True --attack_method='fgsm' --eval_batch_count=5

Modes:
  attack       attacks --eval_batch_count batches of --attack_batch_size test images, sweeping
               eps 0.02..0.20 for the eps attacks (C&W runs once); writes the original's files
               into {attack}_{dataset}/{RCE|CE}/ under --results_dir, or --save_pwd.
  kernel_para  features of --eval_batch_count batches of 100 training images
               (--train_data_path) -> kernel_para_{dataset}/ (kernel points, medians).
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
import tensorflow as tf

from rce import placement
from rce.detection import detection
from rce.tables import attack_names
from rce.attacking import attack_runner
import attacks
from rce.detection import characteristics_runner
from rce.model import checkpoints
from rce.flags import definitions
from rce.flags import strict
import dataset_input
from rce.reports import detect_report
from rce.results import io_utils
from rce.results import provenance
from rce.results import result_files
from rce.tables import perturbation
from rce.model import restored_model
from rce.attacking import shards

tf1 = tf.compat.v1
FLAGS = definitions.FLAGS
MODES = ('attack', 'kernel_para', 'detect', 'merge_shards', 'characteristics')
# The flags that change each mode's result, recorded in its summary.
ATTACK_FLAGS = ('dataset', 'RCE_train', 'num_residual_units', 'use_bottleneck', 'seed',
                'attack_method', 'eps', 'eval_batch_count', 'attack_batch_size', 'bim_nb_iter',
                'jsma_max_iter', 'tgsm_target', 'cw_batch_size', 'cw_max_iterations',
                'cw_binary_search_steps', 'cw_learning_rate', 'cw_initial_const')
SHARD_FLAGS = ('num_shards', 'shard_index')
KERNEL_FLAGS = ('dataset', 'RCE_train', 'num_residual_units', 'use_bottleneck', 'seed',
                'eval_batch_count', 'kernel_per_class', 'kernel_subset')
CHARACTERISTICS_FLAGS = ('dataset', 'RCE_train', 'num_residual_units', 'use_bottleneck',
                         'seed', 'eps_round', 'lid_k', 'lid_batch')


def define_flags():
  definitions.define_base_flags()
  definitions.define_eval_flags()
  definitions.define_attack_flags()


def _attack_params():
  return attack_runner.AttackParams(
      batch_size=FLAGS.attack_batch_size, nb_iter=FLAGS.bim_nb_iter,
      jsma_max_iter=FLAGS.jsma_max_iter, tgsm_target=FLAGS.tgsm_target,
      cw_overrides={k: FLAGS['cw_' + k].value for k in attacks.CW_SETTINGS}, seed=FLAGS.seed)


def _restore():
  _, config = placement.tower_devices(min(FLAGS.num_gpus, 1))
  return restored_model.RestoredModel(definitions.hparams_from_flags(),
                                      FLAGS.dataset, FLAGS.log_root, config)


def _provenance(model, data_files, flag_names):
  """The provenance block of this run's summary: model, data files, result-changing flags."""
  return provenance.record(
      provenance.model_record(model.info, result_files.model_name(FLAGS.RCE_train), model.hps),
      provenance.data_record(data_files), {name: FLAGS[name].value for name in flag_names})


def _check_kernel_model(kernel_summary, model, kernel_dir):
  """The white-box attack needs the kernel of this very checkpoint (model fingerprint)."""
  made_by = kernel_summary['provenance']['model']
  if made_by['fingerprint'] != model.info.fingerprint:
    raise result_files.ResultsError(
        '%s: %s was made from checkpoint %s (step %d), not from the model of --log_root=%s '
        '(%s, step %d); rerun test_adv.py --mode=kernel_para for it'
        % (kernel_dir, result_files.kernel_summary_name(FLAGS.RCE_train),
           made_by['checkpoint'], made_by['global_step'], FLAGS.log_root, model.ckpt,
           model.step))


def run_attack():
  """--mode=attack: every check first, then one graph, then the rounds, then the files."""
  definitions.require_flags('test_adv.py --mode=attack', 'eval_data_path', 'log_root')
  spec = attacks.get_attack(FLAGS.attack_method)
  n = FLAGS.eval_batch_count * FLAGS.attack_batch_size
  files = dataset_input.validate_files(FLAGS.dataset, FLAGS.eval_data_path)
  images, labels = dataset_input.load_arrays(FLAGS.dataset, FLAGS.eval_data_path, n, files)
  if len(images) < n:
    logging.warning('the test files hold %d images, fewer than %d = --eval_batch_count x '
                    '--attack_batch_size: attacking %d', len(images), n, len(images))
  shards.check_count(len(images), FLAGS.num_shards)
  kernel = None
  kernel_dir = result_files.kernel_dir(FLAGS.dataset, FLAGS.results_dir)
  if spec.info.white_box:
    kernel, kernel_summary = result_files.load_kernel_params(kernel_dir, FLAGS.RCE_train,
                                                             FLAGS.dataset)
  model = _restore()
  if spec.info.white_box:
    _check_kernel_model(kernel_summary, model, kernel_dir)
  out_dir = _attack_dir()
  targets = attack_runner.random_targets(labels, FLAGS.seed, model.hps.num_classes)
  shard = None
  if FLAGS.num_shards > 1:  # this run's contiguous share; every image keeps its target
    start, end = shards.share(len(images), FLAGS.shard_index, FLAGS.num_shards)
    images, labels, targets = images[start:end], labels[start:end], targets[start:end]
    out_dir = shards.shard_dir(out_dir, FLAGS.shard_index, FLAGS.num_shards)
    shard = {'index': FLAGS.shard_index, 'count': FLAGS.num_shards, 'start': start,
             'end': end}
  io_utils.check_writable_dir(out_dir, '--save_pwd' if FLAGS.save_pwd else '--results_dir')
  params = _attack_params()

  def attempt(cw_batch):
    """Builds the attack (C&W at `cw_batch`; None: its own) in a restored graph, runs it."""
    nonlocal model
    run_params = params
    if cw_batch is not None:
      run_params = params._replace(cw_overrides=dict(params.cw_overrides, batch_size=cw_batch))
    model = model or _restore()  # a retry restores into a fresh graph
    try:
      return _attack_rounds(model, spec, run_params, images, labels, targets, kernel, out_dir)
    except BaseException:
      model.close()  # frees the device memory before a retry at a smaller batch
      model = None
      raise

  sizes = [None]
  if not spec.info.swept:
    sizes = attack_runner.cw_batch_sizes(len(images), FLAGS.cw_batch_size,
                                         placement.available_gpus())
    if sizes[0] is not None and FLAGS.cw_batch_size is None:
      logging.info('GPU present: C&W batch = all %d attacked images (falls back to smaller '
                   'batches if that does not fit; --cw_batch_size sets it)', sizes[0])
  adv_rounds, extra, eps_list = attack_runner.with_batch_fallback(attempt, sizes)
  arrays, per_round = attack_runner.collect(model, images, labels, adv_rounds, eps_list)
  summary = {'attack': FLAGS.attack_method, 'dataset': FLAGS.dataset,
             'model': result_files.model_name(FLAGS.RCE_train), 'checkpoint': model.ckpt,
             'checkpoint_step': model.step, 'num_examples': len(images),
             'num_rounds': len(eps_list), 'eps': eps_list, 'rounds': per_round,
             'num_residual_units': FLAGS.num_residual_units, 'attack_stats': extra,
             'provenance': _provenance(model, files, ATTACK_FLAGS + SHARD_FLAGS)}
  if shard:
    summary['shard'] = shard
  result_files.save_attack_results(out_dir, arrays, summary)
  if extra:
    logging.info('%s: %s', FLAGS.attack_method, extra)
  print('wrote %s results (%d images, %d rounds) to %s'
        % (FLAGS.attack_method, len(images), len(eps_list), out_dir))
  model.close()
  return out_dir


def _attack_rounds(model, spec, params, images, labels, targets, kernel, out_dir):
  """Builds the attack in the restored graph, finalizes it, runs every round.

  Returns (adversarial rounds [R, N, ...], attack statistics, eps list).
  """
  if spec.info.swept:
    attack, eps_list = attack_runner.EpsAttack(model, spec, params), perturbation.eps_schedule(
        FLAGS.eps)
  else:
    attack, eps_list = attack_runner.CWAttack(model, spec, params, kernel), [None]
  model.init_new_variables()
  model.graph.finalize()  # nothing may be added per batch or round
  logging.info('%s on %d images of %s (%s model, checkpoint step %d) -> %s',
               FLAGS.attack_method, len(images), FLAGS.eval_data_path,
               result_files.model_name(FLAGS.RCE_train), model.step, out_dir)
  progress = attack_runner.Progress(FLAGS.attack_method, len(images) * len(eps_list))
  if spec.info.swept:
    return attack.run(images, eps_list, progress), {}, eps_list
  adv_rounds, extra = attack.run(images, labels, targets, progress)
  return adv_rounds, extra, eps_list


def _attack_dir():
  return result_files.attack_dir(FLAGS.attack_method, FLAGS.dataset, FLAGS.RCE_train,
                                 FLAGS.save_pwd, FLAGS.results_dir)


def run_merge_shards():
  """--mode=merge_shards: the --num_shards shard folders -> the ordinary result folder."""
  definitions.require_flags('test_adv.py --mode=merge_shards', 'eval_data_path', 'log_root')
  if FLAGS.num_shards < 2:
    raise ValueError('--mode=merge_shards needs --num_shards (the number of shards, >= 2)')
  files = dataset_input.validate_files(FLAGS.dataset, FLAGS.eval_data_path)
  info = checkpoints.require_finite(checkpoints.inspect(
      checkpoints.require_checkpoint(FLAGS.log_root)))
  data = provenance.data_record(files)
  flags = {name: FLAGS[name].value for name in ATTACK_FLAGS + ('num_shards',)}
  out_dir = _attack_dir()
  found = shards.load_shards(out_dir, FLAGS.num_shards, info.fingerprint,
                             provenance.data_identity(data), flags)
  hps = definitions.hparams_from_flags()
  record = provenance.record(
      provenance.model_record(info, result_files.model_name(FLAGS.RCE_train), hps), data,
      {name: FLAGS[name].value for name in ATTACK_FLAGS})
  summary = shards.merge(out_dir, found, record)
  print('merged %d shards of %s (%d images) into %s'
        % (FLAGS.num_shards, FLAGS.attack_method, summary['num_examples'], out_dir))
  return out_dir


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
  files = dataset_input.validate_files(FLAGS.dataset, pattern)
  images, labels = dataset_input.load_arrays(FLAGS.dataset, pattern,
                                             FLAGS.eval_batch_count * 100, files)
  model = _restore()
  out_dir = result_files.kernel_dir(FLAGS.dataset, FLAGS.results_dir)
  io_utils.check_writable_dir(out_dir, '--results_dir')
  layer_model = characteristics_runner.LayerModel(model)
  pooled = layer_model.outputs(images, pooled=True)  # one pass: every layer, the feature last
  model.close()
  features = pooled[layer_model.names.index('feature')]
  params = detection.kernel_params(features, labels, FLAGS.RCE_train,
                                       model.hps.num_classes, FLAGS.kernel_per_class,
                                       FLAGS.kernel_subset, FLAGS.seed)
  # Lee et al.'s class means and shared covariance of every layer, for --mode=characteristics.
  params.update(characteristics_runner.training_statistics(layer_model.names, pooled, labels,
                                                           model.hps.num_classes))
  result_files.save_kernel_params(
      out_dir, FLAGS.RCE_train, features, labels, params,
      {'dataset': FLAGS.dataset, 'num_examples': len(features),
       'provenance': _provenance(model, files, KERNEL_FLAGS)})
  print('wrote kernel parameters of %d training features (%s) to %s'
        % (len(features), result_files.model_name(FLAGS.RCE_train), out_dir))
  return out_dir


def run_characteristics():
  """--mode=characteristics: LID and Mahalanobis characteristics of every attack folder of
  this model under --results_dir, written into {attack folder}/characteristics/."""
  definitions.require_flags('test_adv.py --mode=characteristics', 'log_root')
  model_name = result_files.model_name(FLAGS.RCE_train)
  found = {a: dirs[model_name] for a, dirs in result_files.find_attacks(
      FLAGS.results_dir, FLAGS.dataset, (model_name,)).items()}
  if not found:
    raise result_files.ResultsError(
        'no attack results of the %s model for %s under --results_dir=%s; run test_adv.py '
        '--mode=attack first' % (model_name, FLAGS.dataset, FLAGS.results_dir))
  kernel_dir = result_files.kernel_dir(FLAGS.dataset, FLAGS.results_dir)
  kernel, kernel_summary = result_files.load_kernel_params(kernel_dir, FLAGS.RCE_train,
                                                           FLAGS.dataset)
  model = _restore()
  _check_kernel_model(kernel_summary, model, kernel_dir)
  for attack, directory in sorted(found.items()):  # every folder checked before any work
    made_by = result_files.load_verified_summary(directory)['provenance']['model']
    if made_by['fingerprint'] != model.info.fingerprint:
      raise result_files.ResultsError(
          '%s was made by checkpoint %s (step %d), not by the model of --log_root=%s (%s, step '
          '%d); rerun the attack' % (directory, made_by['checkpoint'], made_by['global_step'],
                                     FLAGS.log_root, model.ckpt, model.step))
    io_utils.check_writable_dir(directory, '--results_dir')
  stats = characteristics_runner.stats_from_kernel(kernel, list(model.layers), kernel_dir,
                                                   FLAGS.RCE_train)
  layer_model = characteristics_runner.LayerModel(model, stats)
  model.graph.finalize()
  for attack in attack_names.ordered(found):
    arrays, facts = characteristics_runner.attack_characteristics(
        layer_model, stats, found[attack], FLAGS.eps_round, FLAGS.lid_k, FLAGS.lid_batch,
        FLAGS.seed)
    data = result_files.load_summary(found[attack])['provenance']['data']
    summary = dict(facts, attack=attack, model=model_name, dataset=FLAGS.dataset,
                   kernel_run_id=result_files.run_id(kernel_summary),
                   provenance=provenance.record(
                       provenance.model_record(model.info, model_name, model.hps), data,
                       {n: FLAGS[n].value for n in CHARACTERISTICS_FLAGS}))
    result_files.save_characteristics(found[attack], arrays, summary)
    print('wrote the characteristics of %s (%s, %d examples, eps %s) to %s' % (
        attack, model_name, facts['num_examples'], facts['eps'],
        result_files.characteristics_dir(found[attack])))
  model.close()


def run_detect():
  """--mode=detect: Table 2, ROC curves and the thresholding test."""
  text, _ = detect_report.detect(FLAGS.results_dir, FLAGS.dataset, FLAGS.eps_round,
                                 auc_ties=FLAGS.auc_ties)
  print(text)
  return text


def main():
  definitions.check_mode(MODES, 'test_adv.py')
  {'attack': run_attack, 'kernel_para': run_kernel_para, 'detect': run_detect,
   'merge_shards': run_merge_shards,
   'characteristics': run_characteristics}[FLAGS.mode or 'attack']()


if __name__ == '__main__':
  strict.run_script(define_flags, main)
