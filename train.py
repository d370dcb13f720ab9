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


def _test_precision_hook(hps, spec, global_step, summary_dir):
  """An eval-mode copy of the model on the test files, for the periodic test precision."""
  pattern = FLAGS.eval_data_path or dataset_input.default_test_pattern(
      FLAGS.dataset, FLAGS.train_data_path)
  if FLAGS.test_every_steps <= 0 or not pattern:
    logging.info('periodic test precision off (no --eval_data_path and no %s beside the '
                 'training files, or --test_every_steps=0)', spec.test_file)
    return None
  files = dataset_input.validate_files(FLAGS.dataset, pattern)
  iterator, correct, count = evaluation.build_test_precision(hps, FLAGS.dataset, pattern, 100,
                                                           files)
  logging.info('test precision every %d steps on %d batches of %s', FLAGS.test_every_steps,
               FLAGS.test_batches, pattern)
  return training.TestPrecisionHook(global_step, iterator, correct, count,
                                    FLAGS.test_every_steps, FLAGS.test_batches, summary_dir)


def train():
  """Builds the graph from the flags and runs the training loop."""
  definitions.check_mode(['train'], 'train.py')
  definitions.require_flags('train.py', 'train_data_path', 'log_root')
  spec = dataset_input.get_spec(FLAGS.dataset)
  files = dataset_input.validate_files(FLAGS.dataset, FLAGS.train_data_path)
  hps = definitions.hparams_from_flags()
  devices, config = placement.tower_devices(FLAGS.num_gpus)
  summary_dir = _summary_dir()

  ckpt = checkpoints.latest_checkpoint(FLAGS.log_root)
  start_step = 0
  if ckpt:
    start_step = checkpoints.require_finite(checkpoints.inspect(ckpt)).step
    logging.info('resuming from %s at step %d', ckpt, start_step)
  if start_step >= FLAGS.total_steps:
    logging.info('checkpoint step %d >= --total_steps=%d: nothing to do', start_step,
                 FLAGS.total_steps)
    return start_step
  if ckpt:
    checkpoints.check_lineage(ckpt, FLAGS.log_root, FLAGS.precision,
                              training.PRECISIONS[FLAGS.precision].loss_scaling)
  io_utils.check_writable_dir(FLAGS.log_root, '--log_root')
  io_utils.check_writable_dir(summary_dir, '--train_dir')
  if not ckpt:
    checkpoints.write_lineage(FLAGS.log_root, FLAGS.precision)

  params, flops = resnet_model.count_params_and_flops(hps, dataset_input.image_shape(spec))
  logging.info('ResNet (%d units/stage, %s): %d trainable parameters, %.1f MFLOPs per image',
               hps.num_residual_units, 'RCE' if hps.RCE_train else 'CE', params, flops / 1e6)
  print('parameters: %d, FLOPs per image: %d' % (params, flops))

  tf1.set_random_seed(FLAGS.seed)
  with tf.device('/cpu:0'):
    ds = dataset_input.make_dataset(FLAGS.dataset, FLAGS.train_data_path, FLAGS.batch_size,
                                    train=True, seed=FLAGS.seed, files=files)
    images, labels = tf1.data.make_one_shot_iterator(ds).get_next()
  graph = training.build_train_graph(hps, spec, images, labels, devices,
                                     definitions.lr_schedule_from_flags(), FLAGS.precision)
  hooks = [tf1.train.StopAtStepHook(last_step=FLAGS.total_steps),
           tf1.train.NanTensorHook(graph.loss),
           training.LoggingHook(graph, FLAGS.log_steps, FLAGS.batch_size)]
  test_hook = _test_precision_hook(hps, spec, graph.global_step, summary_dir)
  if test_hook:
    hooks.append(test_hook)

  if ckpt:  # resumed: the checkpoint must fit this graph, optimizer slots included
    checkpoints.check_compatible(ckpt, tf1.global_variables())
  # Built last, so that its finiteness check covers every variable.
  scaffold = tf1.train.Scaffold(saver=training.FiniteSaver(sharded=True, max_to_keep=5))

  logging.info('training on %s, global batch %d, %s, to step %d', ', '.join(devices),
               FLAGS.batch_size, FLAGS.precision, FLAGS.total_steps)
  with tf1.train.MonitoredTrainingSession(
      checkpoint_dir=FLAGS.log_root, summary_dir=summary_dir, hooks=hooks, config=config,
      scaffold=scaffold,
      save_checkpoint_steps=FLAGS.checkpoint_steps, save_checkpoint_secs=None,
      save_summaries_steps=FLAGS.summary_steps, log_step_count_steps=None) as sess:
    while not sess.should_stop():
      sess.run(graph.train_op)
  step = checkpoints.checkpoint_step(checkpoints.latest_checkpoint(FLAGS.log_root))
  logging.info('finished at step %d; checkpoint in %s', step, FLAGS.log_root)
  return step


def _summary_dir():
  return FLAGS.train_dir or os.path.join(FLAGS.log_root, 'train')


def _write_failed(path, reason, made):
  """ValueError for a file error under the output folders (a full disk): removes
  TensorFlow's temporary files and, when no checkpoint was written, the folders `made`."""
  for folder in (FLAGS.log_root, _summary_dir()):
    training.remove_partial_writes(folder)
  last = checkpoints.latest_checkpoint(FLAGS.log_root)
  if last:
    where = ('the checkpoints written before are kept and a rerun resumes from %s (step %d)'
             % (last, checkpoints.checkpoint_step(last)))
  else:
    for folder in made:
      shutil.rmtree(folder, ignore_errors=True)
    where = 'no checkpoint was written, so a rerun starts afresh'
  flag = ('--log_root=%s' % FLAGS.log_root if io_utils.is_inside(path, FLAGS.log_root)
          else '--train_dir=%s' % _summary_dir())
  return ValueError('%s (%s): %s; training stopped: %s' % (path, flag, reason, where))


def _stopped(what):
  """ValueError for a training stopped on non-finite values, naming the last finite checkpoint."""
  last = checkpoints.last_finite_checkpoint(FLAGS.log_root)
  where = ('the last finite checkpoint is %s (step %d) and a rerun resumes from it'
           % (last, checkpoints.checkpoint_step(last)) if last
           else 'no checkpoint was written, so a rerun starts afresh')
  return ValueError('%s; training stopped and nothing non-finite was saved: %s. Try a lower '
                    'learning rate (--lr_values) or another --Optimizer.' % (what, where))


def main():
  outputs = [FLAGS.log_root, _summary_dir()] if FLAGS.log_root else []
  made = [d for d in outputs if not os.path.exists(d)]  # not their parents: shared by others
  try:
    train()
  except (OSError, tf.errors.OpError) as e:  # a write under the outputs, e.g. a full disk
    failed = training.failed_file(e, outputs)
    if failed is None:
      raise
    raise _write_failed(failed[0], failed[1], made)
  except tf1.train.NanLossDuringTrainingError:
    raise _stopped('the training loss became NaN')
  except training.NonFiniteError as e:
    raise _stopped('the variables became non-finite by step %s (%s)'
                   % (e.step, ', '.join(e.names[:3])))


if __name__ == '__main__':
  strict.run_script(define_flags, main)
