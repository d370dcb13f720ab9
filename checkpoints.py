"""Finding, checking and restoring checkpoints in --log_root, with errors that say what to do."""
import os

import tensorflow as tf

import resnet_model

tf1 = tf.compat.v1


class CheckpointError(RuntimeError):
  """No usable checkpoint, or one that does not fit the model built from the flags."""


def latest_checkpoint(log_root):
  """Path prefix of the newest checkpoint in `log_root`, or None."""
  if not log_root or not os.path.isdir(log_root):
    return None
  return tf.train.latest_checkpoint(log_root)


def checkpoint_step(path):
  """The global step a checkpoint was saved at (0 when it has none)."""
  reader = tf.train.load_checkpoint(path)
  if reader.has_tensor('global_step'):
    return int(reader.get_tensor('global_step'))
  return 0


def require_checkpoint(log_root):
  """The newest checkpoint in `log_root`; CheckpointError naming the directory if none."""
  path = latest_checkpoint(log_root)
  if path is None:
    raise CheckpointError('no checkpoint in --log_root=%r; train one first with train.py '
                          '--log_root=%s' % (log_root, log_root or 'DIR'))
  return path


def check_compatible(path, variables):
  """Raises CheckpointError unless every variable exists in the checkpoint with its shape.

  A checkpoint of another depth (a different --num_residual_units) or data set (channels)
  is the usual cause; the message says so.
  """
  shapes = tf.train.load_checkpoint(path).get_variable_to_shape_map()
  missing, wrong = [], []
  for v in variables:
    name = v.op.name
    if name not in shapes:
      missing.append(name)
    elif list(shapes[name]) != v.shape.as_list():
      wrong.append('%s: checkpoint %s, model %s' % (name, shapes[name], v.shape.as_list()))
  if missing or wrong:
    detail = ('missing from the checkpoint: %s' % ', '.join(missing[:3]) if missing
              else 'shape mismatch: %s' % '; '.join(wrong[:3]))
    raise CheckpointError(
        'checkpoint %s does not match the model built from the flags (%s); check '
        '--num_residual_units, --use_bottleneck and --dataset against the training run'
        % (path, detail))


def restore(sess, path, variables=None):
  """Checks and restores `variables` (default: the ResNet's); returns the checkpoint's step."""
  if variables is None:
    variables = resnet_model.model_variables()
  check_compatible(path, variables)
  tf1.train.Saver(variables).restore(sess, path)
  return checkpoint_step(path)
