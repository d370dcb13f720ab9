"""Finding, checking and restoring checkpoints in --log_root, with errors that say what to do.

A checkpoint is identified by its step and a fingerprint of the network's variables (SHA-256
over their names and values), which every result records; one holding a non-finite value is
refused by every reader and never written by train.py.
"""
import collections
import hashlib
import os

import numpy as np
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


CheckpointInfo = collections.namedtuple('CheckpointInfo', [
    'path', 'step', 'fingerprint', 'nonfinite'])


def inspect(path):
  """Reads checkpoint `path` once: its step, the model fingerprint and non-finite variables.

  Returns:
    CheckpointInfo: `fingerprint` is the hex SHA-256 of the network's variables (names, shapes
    and values, optimizer slots excluded), the same for the same weights wherever they are;
    `nonfinite` lists every float variable (optimizer slots and BN statistics included)
    holding a NaN or an infinity.
  """
  reader = tf.train.load_checkpoint(path)
  digest = hashlib.sha256()
  nonfinite = []
  for name in sorted(reader.get_variable_to_shape_map()):
    value = np.asarray(reader.get_tensor(name))
    if value.dtype.kind == 'f' and not np.isfinite(value).all():
      nonfinite.append(name)
    if resnet_model.is_model_variable_name(name):
      digest.update(('%s %s %s\n' % (name, value.dtype.str, value.shape)).encode())
      digest.update(np.ascontiguousarray(value).tobytes())
  step = int(reader.get_tensor('global_step')) if reader.has_tensor('global_step') else 0
  return CheckpointInfo(path, step, digest.hexdigest(), nonfinite)


def require_finite(info):
  """CheckpointError unless every variable of the inspected checkpoint is finite."""
  if info.nonfinite:
    raise CheckpointError(
        'checkpoint %s (step %d) holds non-finite values (%s%s); it is refused. Remove it '
        '(and its entry in the "checkpoint" file) to fall back on an earlier one, or retrain'
        % (info.path, info.step, ', '.join(info.nonfinite[:3]),
           ', ...' if len(info.nonfinite) > 3 else ''))
  return info


def last_finite_checkpoint(log_root):
  """The newest checkpoint of `log_root` whose variables are all finite, or None."""
  if not log_root or not os.path.isdir(log_root):
    return None
  state = tf.train.get_checkpoint_state(log_root)
  paths = list(state.all_model_checkpoint_paths) if state else []
  for path in reversed(paths):
    if os.path.exists(path + '.index') and not inspect(path).nonfinite:
      return path
  return None


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
  is the usual cause, or, for a training resumed, another --Optimizer (its slot variables);
  the message says so.
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
        '--num_residual_units, --use_bottleneck, --dataset and --Optimizer against the '
        'training run' % (path, detail))


def restore(sess, path, variables=None):
  """Checks and restores `variables` (default: the ResNet's).

  Returns:
    The checkpoint's CheckpointInfo (step, fingerprint); a non-finite checkpoint or one that
    does not fit the variables is a CheckpointError, raised before anything is restored.
  """
  if variables is None:
    variables = resnet_model.model_variables()
  info = require_finite(inspect(path))
  check_compatible(path, variables)
  tf1.train.Saver(variables).restore(sess, path)
  return info
