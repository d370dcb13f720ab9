"""Clean ("normal setting") precision of the checkpoints in --log_root.

  python test_nor.py --eval_data_path='mnist_dataset/data_test.bin' \\
    --log_root=models_mnist/resnet32 --eval_dir=models_mnist/resnet32/eval --dataset='mnist' \\
    --num_gpus=1 --num_residual_units=5 --mode=eval --RCE_train=True

Evaluates --eval_batch_count batches of --eval_batch_size test images with the RCE flip for
RCE models. With --eval_once it evaluates the latest checkpoint once (an error if there is
none); otherwise it polls --log_root for new checkpoints, sleeping between polls. Each
evaluation is also written to {eval_dir}/precision.json with its provenance (checkpoint, step,
model fingerprint, data files, flags) and checksum, for reproduce.py and Table 1.
"""
import collections
import os
import sys
import time

from absl import logging
import tensorflow as tf

from rce import placement
from rce.model import evaluation
from rce.model import checkpoints
from rce.flags import definitions
from rce.flags import strict
import dataset_input
from rce.results import io_utils
from rce.results import provenance
import resnet_model
from rce.results import result_files

tf1 = tf.compat.v1
FLAGS = definitions.FLAGS


def define_flags():
  definitions.define_base_flags()
  definitions.define_eval_flags()


# One run: the model (HParams, data set, --log_root, --num_gpus: one device at most), the
# test files `data_path` read in `batch_count` batches of `batch_size`, the output folder
# `eval_dir`; `once`, or poll every `interval_secs`; `flags`: {name: value} of the flags that
# change the result.
EvalSettings = collections.namedtuple('EvalSettings', [
    'hps', 'dataset', 'log_root', 'num_gpus', 'data_path', 'batch_count', 'batch_size',
    'eval_dir', 'once', 'interval_secs', 'flags'])


class Evaluator(object):
  """The eval graph, built once: a re-initializable pass over the test files."""

  def __init__(self, hps, dataset, pattern, batch_size):
    self.files = files = dataset_input.validate_files(dataset, pattern)
    self.graph = tf.Graph()
    with self.graph.as_default():
      self.iterator, self.correct, self.count = evaluation.build_test_precision(
          hps, dataset, pattern, batch_size, files)
      self.variables = resnet_model.model_variables()

  def evaluate(self, ckpt, batch_count, config=None):
    """(precision, images evaluated, CheckpointInfo) of checkpoint `ckpt`."""
    with tf1.Session(graph=self.graph, config=config) as sess:
      info = checkpoints.restore(sess, ckpt, self.variables)
      sess.run(self.iterator.initializer)
      correct = total = batches = 0
      for _ in range(batch_count):
        try:
          c, n = sess.run([self.correct, self.count])
        except tf.errors.OutOfRangeError:
          break
        correct, total, batches = correct + c, total + n, batches + 1
    if batches < batch_count:
      logging.warning('the test files hold %d batches, fewer than --eval_batch_count=%d: '
                      'evaluated %d images', batches, batch_count, total)
    return correct / max(total, 1), total, info


def _summary(writer, step, precision, best):
  writer.add_summary(tf1.Summary(value=[
      tf1.Summary.Value(tag='precision', simple_value=precision),
      tf1.Summary.Value(tag='best_precision', simple_value=best)]), step)
  writer.flush()


def write_result(settings, evaluator, info, precision, total):
  """{eval_dir}/precision.json: the precision with its provenance, checksummed."""
  hps = settings.hps
  folder = result_files.FolderWriter(settings.eval_dir, result_files.CLEAN_RESULT)
  return folder.finish({
      'precision': float(precision), 'images': int(total), 'checkpoint': info.path,
      'checkpoint_step': info.step, 'dataset': settings.dataset,
      'provenance': provenance.record(
          provenance.model_record(info, result_files.model_name(hps.RCE_train), hps),
          provenance.data_record(evaluator.files), settings.flags)})


def evaluate_checkpoints(settings):
  """Evaluates the latest checkpoint of `settings.log_root`, then (unless `once`) every new
  one as it appears; returns the precision of the one evaluated `once`."""
  s = settings
  if s.once:
    checkpoints.require_checkpoint(s.log_root)
  else:  # a state file naming another folder's checkpoints is refused before any work
    checkpoints.latest_checkpoint(s.log_root)
  evaluator = Evaluator(s.hps, s.dataset, s.data_path, s.batch_size)
  _, config = placement.tower_devices(min(s.num_gpus, 1))
  io_utils.check_writable_dir(s.eval_dir, '--eval_dir')
  writer = tf1.summary.FileWriter(s.eval_dir)
  best, last_ckpt = 0.0, None
  while True:
    ckpt = checkpoints.latest_checkpoint(s.log_root)
    if ckpt is None or ckpt == last_ckpt:
      logging.info('no new checkpoint in %s; sleeping %d s', s.log_root, s.interval_secs)
      time.sleep(s.interval_secs)
      continue
    precision, total, info = evaluator.evaluate(ckpt, s.batch_count, config)
    step = info.step
    best = max(best, precision)
    last_ckpt = ckpt
    write_result(s, evaluator, info, precision, total)
    _summary(writer, step, precision, best)
    logging.info('step %d: precision %.4f, best precision %.4f (%d images)', step, precision,
                 best, total)
    print('precision: %.4f, best precision: %.4f, images: %d, step: %d'
          % (precision, best, total, step))
    sys.stdout.flush()
    if s.once:
      writer.close()
      return precision


def evaluate():
  definitions.check_mode(['eval'], 'test_nor.py')
  definitions.require_flags('test_nor.py', 'eval_data_path', 'log_root')
  return evaluate_checkpoints(EvalSettings(
      hps=definitions.hparams_from_flags(), dataset=FLAGS.dataset, log_root=FLAGS.log_root,
      num_gpus=FLAGS.num_gpus, data_path=FLAGS.eval_data_path,
      batch_count=FLAGS.eval_batch_count, batch_size=FLAGS.eval_batch_size,
      eval_dir=FLAGS.eval_dir or os.path.join(FLAGS.log_root, 'eval'), once=FLAGS.eval_once,
      interval_secs=FLAGS.eval_interval_secs, flags=definitions.flag_values('precision')))


if __name__ == '__main__':
  strict.run_script(define_flags, evaluate)
