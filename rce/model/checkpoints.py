"""Finding, checking and restoring checkpoints in --log_root, with errors that say what to do.

A checkpoint is identified by its step and a fingerprint of the network's variables (SHA-256
over their names and values), which every result records; one holding a non-finite value is
refused by every reader and never written by train.py.

TensorFlow's `checkpoint` state file may hold absolute paths (train.py writes relative ones),
so a model folder that was copied or moved would load the files of its old place: every
reader resolves the entries inside --log_root (`checkpoint_paths`) and refuses one outside it.
train.py also records the --precision the checkpoints of --log_root were trained with in
`train_lineage.json` beside them (train.py's own record; reproduce.py's `lineage.json` is
another), and a resume checks it.
"""
import collections
import hashlib
import json
import os

import numpy as np
import tensorflow as tf

from rce.results import io_utils
from rce.tables import errors
import resnet_model

tf1 = tf.compat.v1

STATE_FILE = 'checkpoint'  # TensorFlow's list of the checkpoints of a folder
LINEAGE_FILE = 'train_lineage.json'
# The variables tf1.mixed_precision.DynamicLossScale adds (--precision=mixed_float16 only).
LOSS_SCALE_VARIABLES = ('current_loss_scale', 'good_steps')


CheckpointError = errors.CheckpointError


def checkpoint_paths(log_root):
  """(newest, all) checkpoint path prefixes that the state file of `log_root` lists.

  Relative entries are taken relative to `log_root`; an absolute one must lie inside it.
  Entries whose files are missing are left out; `newest` is None when its files are missing
  or there is no state file.

  Raises:
    CheckpointError naming the state file and `log_root` for an entry outside `log_root` (a
    folder copied or moved from elsewhere would otherwise load the old place's files) or
    an unreadable state file.
  """
  if not log_root or not os.path.isfile(os.path.join(log_root, STATE_FILE)):
    return None, []
  state_file = os.path.join(log_root, STATE_FILE)
  try:  # None (a warning logged) for an unreadable or unparsable file
    state = tf.train.get_checkpoint_state(log_root)
  except ValueError:  # parsed, but names no checkpoint
    state = None
  if state is None:
    raise CheckpointError('%s: not a checkpoint state file TensorFlow can read; remove it or '
                          'list the checkpoints of --log_root=%s in it' % (state_file, log_root))
  entries = list(state.all_model_checkpoint_paths)
  if state.model_checkpoint_path not in entries:
    entries.append(state.model_checkpoint_path)
  for path in entries:
    if not io_utils.is_inside(path, log_root):
      raise CheckpointError(
          '%s names the checkpoint %s, outside --log_root=%s (was the folder copied or moved '
          'from there?); refusing to load another folder\'s files. Write the names relative to '
          '--log_root in the state file (e.g. model_checkpoint_path: "%s") or point '
          '--log_root at the folder that holds them'
          % (state_file, path, log_root, os.path.basename(path)))

  newest = state.model_checkpoint_path
  present = [p for p in entries if os.path.exists(p + '.index')]
  return (newest if newest in present else None), present


def latest_checkpoint(log_root):
  """Path prefix of the newest checkpoint in `log_root`, or None (see `checkpoint_paths`)."""
  if not log_root or not os.path.isdir(log_root):
    return None
  return checkpoint_paths(log_root)[0]


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
  for path in reversed(checkpoint_paths(log_root)[1]):
    if not inspect(path).nonfinite:
      return path
  return None


def require_checkpoint(log_root):
  """The newest checkpoint in `log_root`; CheckpointError naming the directory if none."""
  path = latest_checkpoint(log_root)
  if path is None:
    raise CheckpointError('no checkpoint in --log_root=%r; train one first with train.py '
                          '--log_root=%s' % (log_root, log_root or 'DIR'))
  return path


def write_lineage(log_root, precision):
  """Records in `log_root` the --precision its checkpoints are trained with (a fresh start)."""
  io_utils.atomic_write_json(os.path.join(log_root, LINEAGE_FILE), {'precision': precision})


def check_lineage(path, log_root, precision, loss_scaling):
  """CheckpointError naming --precision unless checkpoint `path` of `log_root` was trained
  with `precision` (a resume), before any work.

  Args:
    path: the checkpoint resumed.
    log_root: its folder, holding the record `write_lineage` made.
    precision: the --precision asked for now.
    loss_scaling: whether that precision scales the loss (adds LOSS_SCALE_VARIABLES); for a
      checkpoint without the record (an older one) only that much can be checked.
  """
  lineage_file = os.path.join(log_root, LINEAGE_FILE)
  if not os.path.exists(lineage_file):
    names = tf.train.load_checkpoint(path).get_variable_to_shape_map()
    scaled = all(name in names for name in LOSS_SCALE_VARIABLES)
    if scaled != loss_scaling:
      made = ('holds loss-scale variables (%s): it was trained with --precision=mixed_float16'
              if scaled else 'has no loss-scale variables (%s): it was trained with '
              '--precision=fp32 or mixed_bfloat16') % ', '.join(LOSS_SCALE_VARIABLES)
      raise CheckpointError('checkpoint %s %s, not --precision=%s; resume it with the '
                            '--precision it was trained with, or train in a new --log_root'
                            % (path, made, precision))
    return
  try:
    with open(lineage_file) as f:
      recorded = json.load(f)['precision']
  except (ValueError, KeyError, TypeError) as e:
    raise CheckpointError('%s: not a lineage record train.py wrote (%s); remove it to resume '
                          '%s unchecked' % (lineage_file, e, path))
  if recorded != precision:
    raise CheckpointError(
        'checkpoint %s was trained with --precision=%s (%s), not --precision=%s; resume it '
        'with --precision=%s, or train with --precision=%s in a new --log_root'
        % (path, recorded, lineage_file, precision, recorded, precision))


def check_compatible(path, variables):
  """Raises CheckpointError unless every variable exists in the checkpoint with its shape.

  A checkpoint of another depth (a different --num_residual_units) or data set (channels)
  is the usual cause, or, for a training resumed, another --Optimizer (its slot variables)
  or --precision (mixed_float16's loss-scale variables); the message says so.
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
        '--num_residual_units, --use_bottleneck, --dataset, --Optimizer and --precision '
        'against the training run' % (path, detail))


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
