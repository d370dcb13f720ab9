"""Trains a ResNet with CE or RCE (--RCE_train) on mnist or cifar10, on one device or N towers.

  python train.py --train_data_path='mnist_dataset/data_train.bin' \\
    --log_root=models_mnist/resnet32 --train_dir=models_mnist/resnet32/train \\
    --dataset='mnist' --num_gpus=1 --num_residual_units=5 --mode=train --Optimizer='mom' \\
    --total_steps=20000 --RCE_train=True

Checkpoints go to --log_root every --checkpoint_steps and at the end; a rerun resumes from
the latest one (trained with the same --precision) and stops exactly at --total_steps. A
write that fails (a full disk) stops the training with one line naming the file; the
checkpoints written before are kept, TensorFlow's temporary files are removed, and so are
the folders the run made when it wrote no checkpoint.
"""
import collections
import os
import shutil

from absl import logging
import tensorflow as tf

from rce import placement
from rce.model import evaluation
from rce.model import checkpoints
from rce.flags import definitions
from rce.flags import strict
import dataset_input
from rce.results import io_utils
import resnet_model
from rce.training import training

tf1 = tf.compat.v1
FLAGS = definitions.FLAGS


def define_flags():
  definitions.define_train_flags()


# One training run: the model's HParams on `dataset`; the training files `data_path` and the
# test files `test_path` of the periodic test precision ('': the test file beside the
# training files, if there is one); checkpoints in `log_root`, summaries in `summary_dir`;
# `num_gpus` towers; `lr_schedule` (boundaries, values), or None for the data set's; the
# rest as train.py's flags of the same names.
TrainSettings = collections.namedtuple('TrainSettings', [
    'hps', 'dataset', 'data_path', 'test_path', 'log_root', 'summary_dir', 'num_gpus',
    'total_steps', 'batch_size', 'precision', 'lr_schedule', 'seed', 'checkpoint_steps',
    'summary_steps', 'log_steps', 'test_every_steps', 'test_batches'])


def _test_precision_hook(settings, spec, global_step):
  """An eval-mode copy of the model on the test files, for the periodic test precision."""
  s = settings
  pattern = s.test_path or dataset_input.default_test_pattern(s.dataset, s.data_path)
  if s.test_every_steps <= 0 or not pattern:
    logging.info('periodic test precision off (no --eval_data_path and no %s beside the '
                 'training files, or --test_every_steps=0)', spec.test_file)
    return None
  files = dataset_input.validate_files(s.dataset, pattern)
  iterator, correct, count = evaluation.build_test_precision(s.hps, s.dataset, pattern, 100,
                                                           files)
  logging.info('test precision every %d steps on %d batches of %s', s.test_every_steps,
               s.test_batches, pattern)
  return training.TestPrecisionHook(global_step, iterator, correct, count,
                                    s.test_every_steps, s.test_batches, s.summary_dir)


def train(settings):
  """Builds the training graph of `settings` and trains to `total_steps`, resuming from the
  latest checkpoint in `log_root`; returns the global step reached."""
  s = settings
  spec = dataset_input.get_spec(s.dataset)
  files = dataset_input.validate_files(s.dataset, s.data_path)
  hps = s.hps
  devices, config = placement.tower_devices(s.num_gpus)

  ckpt = checkpoints.latest_checkpoint(s.log_root)
  start_step = 0
  if ckpt:
    start_step = checkpoints.require_finite(checkpoints.inspect(ckpt)).step
    logging.info('resuming from %s at step %d', ckpt, start_step)
  if start_step >= s.total_steps:
    logging.info('checkpoint step %d >= --total_steps=%d: nothing to do', start_step,
                 s.total_steps)
    return start_step
  if ckpt:
    checkpoints.check_lineage(ckpt, s.log_root, s.precision,
                              training.PRECISIONS[s.precision].loss_scaling)
  io_utils.check_writable_dir(s.log_root, '--log_root')
  io_utils.check_writable_dir(s.summary_dir, '--train_dir')
  if not ckpt:
    checkpoints.write_lineage(s.log_root, s.precision)

  params, flops = resnet_model.count_params_and_flops(hps, dataset_input.image_shape(spec))
  logging.info('ResNet (%d units/stage, %s): %d trainable parameters, %.1f MFLOPs per image',
               hps.num_residual_units, 'RCE' if hps.RCE_train else 'CE', params, flops / 1e6)
  print('parameters: %d, FLOPs per image: %d' % (params, flops))

  tf1.set_random_seed(s.seed)
  with tf.device('/cpu:0'):
    ds = dataset_input.make_dataset(s.dataset, s.data_path, s.batch_size, train=True,
                                    seed=s.seed, files=files)
    images, labels = tf1.data.make_one_shot_iterator(ds).get_next()
  graph = training.build_train_graph(hps, spec, images, labels, devices, s.lr_schedule,
                                     s.precision)
  hooks = [tf1.train.StopAtStepHook(last_step=s.total_steps),
           tf1.train.NanTensorHook(graph.loss),
           training.LoggingHook(graph, s.log_steps, s.batch_size)]
  test_hook = _test_precision_hook(s, spec, graph.global_step)
  if test_hook:
    hooks.append(test_hook)

  if ckpt:  # resumed: the checkpoint must fit this graph, optimizer slots included
    checkpoints.check_compatible(ckpt, tf1.global_variables())
  # Built last, so that its finiteness check covers every variable.
  scaffold = tf1.train.Scaffold(saver=training.FiniteSaver(sharded=True, max_to_keep=5))

  logging.info('training on %s, global batch %d, %s, to step %d', ', '.join(devices),
               s.batch_size, s.precision, s.total_steps)
  with tf1.train.MonitoredTrainingSession(
      checkpoint_dir=s.log_root, summary_dir=s.summary_dir, hooks=hooks, config=config,
      scaffold=scaffold,
      save_checkpoint_steps=s.checkpoint_steps, save_checkpoint_secs=None,
      save_summaries_steps=s.summary_steps, log_step_count_steps=None) as sess:
    while not sess.should_stop():
      sess.run(graph.train_op)
  step = checkpoints.checkpoint_step(checkpoints.latest_checkpoint(s.log_root))
  logging.info('finished at step %d; checkpoint in %s', step, s.log_root)
  return step


def write_failed(path, reason, made, log_root, summary_dir):
  """ValueError for a file error under the output folders (a full disk): removes
  TensorFlow's temporary files and, when no checkpoint was written, the folders `made`."""
  for folder in (log_root, summary_dir):
    training.remove_partial_writes(folder)
  last = checkpoints.latest_checkpoint(log_root)
  if last:
    where = ('the checkpoints written before are kept and a rerun resumes from %s (step %d)'
             % (last, checkpoints.checkpoint_step(last)))
  else:
    for folder in made:
      shutil.rmtree(folder, ignore_errors=True)
    where = 'no checkpoint was written, so a rerun starts afresh'
  flag = ('--log_root=%s' % log_root if io_utils.is_inside(path, log_root)
          else '--train_dir=%s' % summary_dir)
  return ValueError('%s (%s): %s; training stopped: %s' % (path, flag, reason, where))


def stopped(what, log_root):
  """ValueError for a training stopped on non-finite values, naming the last finite checkpoint."""
  last = checkpoints.last_finite_checkpoint(log_root)
  where = ('the last finite checkpoint is %s (step %d) and a rerun resumes from it'
           % (last, checkpoints.checkpoint_step(last)) if last
           else 'no checkpoint was written, so a rerun starts afresh')
  return ValueError('%s; training stopped and nothing non-finite was saved: %s. Try a lower '
                    'learning rate (--lr_values) or another --Optimizer.' % (what, where))


def main():
  definitions.check_mode(['train'], 'train.py')
  definitions.require_flags('train.py', 'train_data_path', 'log_root')
  summary_dir = FLAGS.train_dir or os.path.join(FLAGS.log_root, 'train')
  s = TrainSettings(
      hps=definitions.hparams_from_flags(), dataset=FLAGS.dataset,
      data_path=FLAGS.train_data_path, test_path=FLAGS.eval_data_path,
      log_root=FLAGS.log_root, summary_dir=summary_dir, num_gpus=FLAGS.num_gpus,
      total_steps=FLAGS.total_steps, batch_size=FLAGS.batch_size,
      precision=FLAGS.precision, lr_schedule=definitions.lr_schedule_from_flags(),
      seed=FLAGS.seed, checkpoint_steps=FLAGS.checkpoint_steps,
      summary_steps=FLAGS.summary_steps, log_steps=FLAGS.log_steps,
      test_every_steps=FLAGS.test_every_steps, test_batches=FLAGS.test_batches)
  outputs = [s.log_root, s.summary_dir]
  made = [d for d in outputs if not os.path.exists(d)]  # not their parents: shared by others
  try:
    train(s)
  except (OSError, tf.errors.OpError) as e:  # a write under the outputs, e.g. a full disk
    failed = training.failed_file(e, outputs)
    if failed is None:
      raise
    raise write_failed(failed[0], failed[1], made, s.log_root, s.summary_dir)
  except tf1.train.NanLossDuringTrainingError:
    raise stopped('the training loss became NaN', s.log_root)
  except training.NonFiniteError as e:
    raise stopped('the variables became non-finite by step %s (%s)'
                  % (e.step, ', '.join(e.names[:3])), s.log_root)


if __name__ == '__main__':
  strict.run_script(define_flags, main)
