"""Training graph: towers with averaged gradients, optimizers, learning-rate schedule.

With N towers, one model copy per device shares the variables (AUTO_REUSE), each tower gets
an even slice of the global batch, the gradients of the per-tower losses are averaged and
applied in one step. Batch-norm moving averages are updated from the first tower's batch
statistics (the usual multi-GPU practice). When fewer GPUs exist than towers are asked for,
the towers run on virtual CPU devices of the session (`ConfigProto.device_count`). The
checkpoint saver checks finiteness; `failed_file` and `remove_partial_writes` turn a write
that failed under the output folders (a full disk) into its file and clean up after it.
"""
import collections
import os
import re
import shutil
import time

from absl import logging
import tensorflow as tf

from rce.model import evaluation
from rce.results import io_utils
from rce.tables import models
import resnet_model

tf1 = tf.compat.v1

TrainGraph = collections.namedtuple('TrainGraph', [
    'train_op', 'loss', 'precision', 'learning_rate', 'global_step', 'tower_losses',
    'grads_and_vars'])


# --precision: the dtype the network computes in while training, and whether the loss is
# scaled (float16's narrow exponent range needs dynamic loss scaling; bfloat16's does not).
# Variables, the loss, the BN statistics, and every attack and detector stay float32.
Precision = collections.namedtuple('Precision', ['compute_dtype', 'loss_scaling'])
PRECISIONS = {
    'fp32': Precision(tf.float32, False),
    'mixed_float16': Precision(tf.float16, True),
    'mixed_bfloat16': Precision(tf.bfloat16, False),
}
assert tuple(PRECISIONS) == models.PRECISION_NAMES  # the flag's choices are the table's


def learning_rate(spec, global_step, schedule=None):
  """The piecewise-constant schedule as a tensor: `schedule` = (boundaries, values), values[i]
  from step boundaries[i-1] on, or by default the data set's (dataset_input.DATASETS)."""
  boundaries, values = schedule or (spec.lr_boundaries, spec.lr_values)
  return tf1.train.piecewise_constant(global_step, [int(b) for b in boundaries],
                                      [float(v) for v in values])


def make_optimizer(name, lr):
  """sgd | mom | adam | rmsprop with the original settings."""
  if name == 'sgd':
    return tf1.train.GradientDescentOptimizer(lr)
  if name == 'mom':
    return tf1.train.MomentumOptimizer(lr, 0.9)
  if name == 'adam':
    return tf1.train.AdamOptimizer(lr, beta1=0.9, beta2=0.999, epsilon=1.0)
  if name == 'rmsprop':
    return tf1.train.RMSPropOptimizer(lr, decay=0.9, momentum=0.9, epsilon=1.0)
  raise ValueError('unknown --Optimizer=%r; expected sgd, mom, adam or rmsprop' % name)


def average_gradients(tower_grads):
  """Averages [[(grad, var), ...] per tower] variable by variable."""
  averaged = []
  for grads_and_vars in zip(*tower_grads):
    grads = [g for g, _ in grads_and_vars]
    grad = grads[0] if len(grads) == 1 else tf.add_n(grads) / float(len(grads))
    averaged.append((grad, grads_and_vars[0][1]))
  return averaged


def build_towers(hps, images, labels, devices, precision_mode='fp32', loss_scale=None):
  """Builds one loss per tower on an even split of the batch.

  `precision_mode` is a key of PRECISIONS; with `loss_scale` (a LossScale) the gradients are those
  of loss * scale, divided by the scale again.

  Returns:
    (tower_losses, tower_grads, prediction logits of all towers concatenated, BN updates of
    tower 0).
  """
  num = len(devices)
  batch = images.shape[0]
  if batch is not None and batch % num:
    raise ValueError('batch size %d does not divide evenly over %d towers' % (batch, num))
  image_parts, label_parts = tf.split(images, num), tf.split(labels, num)
  losses, grads, logits, updates = [], [], [], []
  for i, device in enumerate(devices):
    with tf.device(device), tf1.name_scope('tower_%d' % i):
      net = resnet_model.build_network(hps, image_parts[i], 'train',
                                       PRECISIONS[precision_mode].compute_dtype)
      variables = tf1.trainable_variables()
      loss = (resnet_model.classification_loss(net.raw_logits, label_parts[i], hps.RCE_train)
              + resnet_model.weight_decay(hps, variables))
      losses.append(loss)
      if loss_scale is None:
        tower_grads = tf.gradients(loss, variables)
      else:
        scale = loss_scale()
        tower_grads = [g / scale for g in tf.gradients(loss * scale, variables)]
      grads.append(list(zip(tower_grads, variables)))
      logits.append(net.logits)
      if i == 0:
        updates = net.update_ops
  return losses, grads, tf.concat(logits, 0), updates


def build_train_graph(hps, spec, images, labels, devices, schedule=None,
                      precision_mode='fp32'):
  """The whole training step: towers, averaged gradients, one apply, BN updates.

  `schedule` is (boundaries, values) of the learning rate (default: the data set's).
  `precision_mode` is a key of PRECISIONS. With float16 the loss scale is dynamic
  (tf.compat.v1.mixed_precision.DynamicLossScale): a step whose gradients are not finite is
  skipped (global step not advanced) and the scale halved; it doubles after 2000 good steps.
  """
  if precision_mode not in PRECISIONS:
    raise ValueError('unknown --precision=%r; expected one of %s'
                     % (precision_mode, ', '.join(PRECISIONS)))
  global_step = tf1.train.get_or_create_global_step()
  lr = learning_rate(spec, global_step, schedule)
  optimizer = make_optimizer(hps.optimizer, lr)
  loss_scale = None
  if PRECISIONS[precision_mode].loss_scaling:
    loss_scale = tf1.mixed_precision.DynamicLossScale()
    optimizer = tf1.mixed_precision.MixedPrecisionLossScaleOptimizer(optimizer, loss_scale)
  losses, tower_grads, logits, updates = build_towers(hps, images, labels, devices,
                                                      precision_mode, loss_scale)
  grads_and_vars = average_gradients(tower_grads)
  with tf.device(devices[0]):
    apply_op = optimizer.apply_gradients(grads_and_vars, global_step=global_step)
    train_op = tf.group(apply_op, *updates, name='train_step')
    loss = tf.add_n(losses) / float(len(losses))
    prec = evaluation.precision(logits, labels)
  tf1.summary.scalar('cost', loss)
  tf1.summary.scalar('learning_rate', lr)
  tf1.summary.scalar('precision', prec)
  return TrainGraph(train_op, loss, prec, lr, global_step, losses, grads_and_vars)


class NonFiniteError(RuntimeError):
  """The variables went non-finite; the checkpoint of `step` was not written."""

  def __init__(self, step, names):
    super().__init__('non-finite values at step %s in %s' % (step, ', '.join(names[:3])))
    self.step, self.names = step, names


class FiniteSaver(tf1.train.Saver):
  """A Saver that checks every float variable (BN moving statistics and optimizer slots
  included) before each save and refuses to write a checkpoint holding a NaN or infinity.

  Its `checkpoint` state file names the checkpoints relative to their folder, so that a
  copied or moved folder still lists its own files. Build it after the whole training graph,
  so that it sees every variable.
  """

  def __init__(self, **kwargs):
    kwargs.setdefault('save_relative_paths', True)
    super().__init__(**kwargs)
    floats = [v for v in tf1.global_variables() if v.dtype.base_dtype.is_floating]
    self._names = [v.op.name for v in floats]
    self._finite = tf.stack([tf.reduce_all(tf.math.is_finite(v)) for v in floats])

  def save(self, sess, save_path, global_step=None, **kwargs):
    finite = sess.run(self._finite)
    if not finite.all():
      raise NonFiniteError(global_step, [n for n, ok in zip(self._names, finite) if not ok])
    return super().save(sess, save_path, global_step=global_step, **kwargs)


# The temporary names TensorFlow writes to before renaming into place: its atomic writes
# (graph.pbtxt, a checkpoint's .meta, the state file) use `{name}.tmp{32 hex digits}`, a
# sharded save `{prefix}_temp/` and its file writer `{file}.tempstate{digits}`.
_TF_TEMPORARY = re.compile(
    r'^(?P<final>.+?)(\.tmp[0-9a-f]{32}|_temp(_[0-9a-f]+)?(/.*)?|\.tempstate[0-9]+)$')
_TF_TEMPORARY_ENTRY = re.compile(
    r'^(.+\.tmp[0-9a-f]{32}|.+\.tempstate[0-9]+|model\.ckpt-[0-9]+_temp(_[0-9a-f]+)?)$')


def failed_file(error, folders):
  """(path, reason) of an error raised on a file in one of `folders` (or below), else None.

  Args:
    error: an OSError, or a TensorFlow error, whose message holds a line '<path>; <reason>'
      (e.g. 'No space left on device'), as TensorFlow's file system writes them.
    folders: the folders the run writes to.

  Returns:
    The path of the file meant (a temporary name TensorFlow wrote to is mapped back to it)
    and the reason, or None for an error of another kind or on another path.
  """
  if isinstance(error, OSError):
    candidates = [(error.filename, error.strerror or str(error))]
  elif isinstance(error, tf.errors.OpError):
    candidates = [line.strip().partition('; ')[::2]
                  for line in (error.message or '').splitlines() if '; ' in line]
  else:
    return None
  for path, reason in candidates:
    if isinstance(path, str) and path and any(
        f and io_utils.is_inside(path, f) for f in folders):
      match = _TF_TEMPORARY.match(path)
      return (match.group('final') if match else path), reason.strip()
  return None


def remove_partial_writes(folder):
  """Deletes the temporary files and folders that interrupted TensorFlow writes (graph,
  checkpoint, state file) left directly in `folder`."""
  if not folder or not os.path.isdir(folder):
    return
  for name in os.listdir(folder):
    if _TF_TEMPORARY_ENTRY.match(name):
      path = os.path.join(folder, name)
      if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
      else:
        os.remove(path)


class LoggingHook(tf1.train.SessionRunHook):
  """Logs step, loss, training precision, learning rate and steps/s every `every` steps."""

  def __init__(self, graph, every, batch_size):
    self._graph, self._every, self._batch_size = graph, max(1, every), batch_size
    self._last = None

  def before_run(self, run_context):
    g = self._graph
    return tf1.train.SessionRunArgs([g.global_step, g.loss, g.precision, g.learning_rate])

  def after_run(self, run_context, run_values):
    step, loss, prec, lr = run_values.results
    step += 1  # the global step after this run's apply
    now = time.time()
    if self._last is None:
      self._last = (step - 1, now)  # the clock starts with the first run
    if step % self._every == 0:
      rate = (step - self._last[0]) / max(now - self._last[1], 1e-9)
      logging.info('step %d: loss %.4f, precision %.4f, lr %g, %.2f steps/s (%.0f images/s)',
                   step, loss, prec, lr, rate, rate * self._batch_size)
      self._last = (step, now)


class TestPrecisionHook(tf1.train.SessionRunHook):
  """Every `every` steps, the precision on `num_batches` test batches (eval-mode model)."""

  def __init__(self, global_step, iterator, correct, count, every, num_batches, summary_dir):
    self._global_step, self._iterator = global_step, iterator
    self._correct, self._count = correct, count
    self._every, self._num_batches = every, num_batches
    self._summary_dir = summary_dir

  def before_run(self, run_context):
    return tf1.train.SessionRunArgs(self._global_step)

  def after_run(self, run_context, run_values):
    step = run_values.results + 1  # the global step after this run's apply
    if step % self._every == 0:
      self.evaluate(run_context.session, step)

  def evaluate(self, session, step):
    session.run(self._iterator.initializer)
    correct = total = 0
    for _ in range(self._num_batches):
      try:
        c, n = session.run([self._correct, self._count])
      except tf.errors.OutOfRangeError:
        break
      correct, total = correct + c, total + n
    if not total:
      return
    value = correct / total
    logging.info('step %d: test precision %.4f on %d images', step, value, total)
    writer = tf1.summary.FileWriterCache.get(self._summary_dir)
    writer.add_summary(tf1.Summary(value=[tf1.Summary.Value(tag='test_precision',
                                                            simple_value=value)]), step)
    writer.flush()
