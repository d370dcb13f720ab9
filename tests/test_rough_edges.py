"""Rough edges found by probing: a full disk, a copied model folder, a checksum error's run
id (issue "Results you can trust"). Each failure is one 'error:' line naming the problem and
the path or flag, a non-zero exit, no traceback, nothing lost and no stray file.

The full-disk cases run twice: on a small tmpfs when the machine lets the test mount one (as
root), and everywhere with the write made to fail in the script's process, as a full disk
makes it fail (TensorFlow's ResourceExhaustedError, or OSError ENOSPC without a file name).
"""
import errno
import os
import shutil
import subprocess

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import (REPO_ROOT, SHARED_TRAIN_STEPS, attack_args, describe, model_flags,  # pylint: disable=g-bad-import-order
                      run_parallel, run_script, train_args)
from rce.model import checkpoints  # pylint: disable=g-bad-import-order
from rce.results import io_utils  # pylint: disable=g-bad-import-order
from rce.results import provenance  # pylint: disable=g-bad-import-order
from rce.results import result_files  # pylint: disable=g-bad-import-order
from rce.training import training  # pylint: disable=g-bad-import-order

TRAIN_EXTRA = ['--test_every_steps=0', '--checkpoint_steps=5']
NO_SPACE = 'No space left on device'

# Runs a script with TensorFlow's atomic file write failing, as on a full disk, for the
# files whose path contains TARGET: a partial temporary file is left, as TensorFlow leaves it.
_TF_FULL_DISK = '''
import sys
sys.path.insert(0, %(repo)r)
import tensorflow as tf
from tensorflow.python.lib.io import file_io
real_write = file_io.atomic_write_string_to_file

def full_disk(filename, contents, overwrite=True):
  if %(target)r in filename:
    temp = filename + '.tmp' + '0123456789abcdef' * 2
    with open(temp, 'w') as f:
      f.write('partial')
    raise tf.errors.ResourceExhaustedError(None, None, '%%s; No space left on device' %% temp)
  return real_write(filename, contents, overwrite)

file_io.atomic_write_string_to_file = full_disk
from rce.flags import strict
import %(script)s as script
strict.run_script(script.define_flags, script.%(main)s)
'''

# Runs a script with every fsync failing with ENOSPC and no file name, as a full disk does
# when a result file is flushed.
_OS_FULL_DISK = '''
import errno, os, sys
sys.path.insert(0, %(repo)r)

def full_disk(fd):
  raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

os.fsync = full_disk
from rce.flags import strict
import %(script)s as script
strict.run_script(script.define_flags, script.%(main)s)
'''


def _injected(template, script, main, args, target=''):
  """The argument list that runs `script`'s `main` under the failure of `template`."""
  return ['-c', template % dict(repo=REPO_ROOT, target=target, script=script, main=main)
          ] + list(args[1:])


def one_error(proc, *needles):
  """The single 'error:' line of a failed run, after checking it names every needle."""
  assert proc.returncode not in (0, None), describe(proc)
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1, describe(proc)
  for needle in needles:
    assert needle in errors[0], (needle, describe(proc))
  assert 'Traceback' not in proc.stderr + proc.stdout, describe(proc)
  return errors[0]


def tree(folder):
  """{relative path: size (None for a folder)} of everything below `folder`."""
  found = {}
  for root, dirs, files in os.walk(str(folder)):
    for name in dirs + files:
      path = os.path.join(root, name)
      found[os.path.relpath(path, str(folder))] = (None if name in dirs
                                                   else os.path.getsize(path))
  return found


def files_below(folder):
  return sorted(p for p, size in tree(folder).items() if size is not None)


@pytest.fixture
def small_tmpfs(tmp_path):
  """A 200 KiB tmpfs mounted at a fresh folder (skipped where mounting is not allowed)."""
  def mount(size):
    point = tmp_path / ('tmpfs_%s' % size)
    point.mkdir()
    try:
      subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=%s' % size, 'tmpfs', str(point)],
                     check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except (OSError, subprocess.CalledProcessError) as e:
      pytest.skip('cannot mount a tmpfs here (%s); the injected variant covers it' % e)
    mounted.append(point)
    return point
  mounted = []
  yield mount
  for point in mounted:
    subprocess.run(['umount', str(point)], check=False)


# ---- 1. a full disk ----------------------------------------------------------------------


def test_train_on_a_full_tmpfs_names_the_file_and_leaves_nothing(small_tmpfs, digits_train):
  disk = small_tmpfs('200k')
  log_root = disk / 'model'
  proc = run_script(train_args(digits_train, log_root, 5, extra=TRAIN_EXTRA))
  one_error(proc, os.path.join(str(log_root), 'graph.pbtxt'), NO_SPACE, '--log_root',
            'no checkpoint was written')
  assert tree(disk) == {}  # the run's folders, temporaries and summaries are gone


def test_attack_on_a_full_tmpfs_names_the_file(small_tmpfs, shared_models, digits_test):
  disk = small_tmpfs('60k')
  results = disk / 'results'
  proc = run_script(attack_args(digits_test, shared_models['CE'], False, 'fgsm', 30,
                                extra=['--results_dir=%s' % results]))
  one_error(proc, NO_SPACE, os.path.join(str(results), 'fgsm_mnist', 'CE', ''))
  assert files_below(disk) == []  # neither a result file of the failed run nor a temporary


def test_train_write_failure_fresh_and_resumed(tmp_path, shared_models, digits_train):
  """graph.pbtxt cannot be written (TensorFlow's ResourceExhaustedError): a fresh run leaves
  no folder; a resumed one keeps every checkpoint and names the one a rerun resumes from."""
  fresh = tmp_path / 'fresh'
  resumed = tmp_path / 'resumed'
  shutil.copytree(shared_models['CE'], str(resumed))
  before = tree(resumed)
  fresh_proc, resumed_proc = run_parallel([
      _injected(_TF_FULL_DISK, 'train', 'main',
                train_args(digits_train, fresh, 5, rce=False, extra=TRAIN_EXTRA),
                target='graph.pbtxt'),
      _injected(_TF_FULL_DISK, 'train', 'main',
                train_args(digits_train, resumed, SHARED_TRAIN_STEPS + 5, rce=False,
                           extra=TRAIN_EXTRA), target='graph.pbtxt')])
  one_error(fresh_proc, os.path.join(str(fresh), 'graph.pbtxt'), NO_SPACE,
            '--log_root=%s' % fresh, 'rerun starts afresh')
  assert not os.path.exists(str(fresh))
  one_error(resumed_proc, os.path.join(str(resumed), 'graph.pbtxt'), NO_SPACE,
            'resumes from %s (step %d)' % (os.path.join(str(resumed), 'model.ckpt-%d'
                                                        % SHARED_TRAIN_STEPS),
                                           SHARED_TRAIN_STEPS))
  after = tree(resumed)
  assert {p: s for p, s in after.items() if p in before} == before  # nothing lost
  new = [p for p in after if p not in before]
  assert all(os.path.basename(p).startswith('events.out.tfevents.') for p in new), new


def test_attack_write_failure_names_the_file(tmp_path, shared_models, digits_test):
  """A result file cannot be flushed (OSError ENOSPC without a file name)."""
  results = tmp_path / 'results'
  proc = run_script(_injected(_OS_FULL_DISK, 'test_adv', 'main', attack_args(
      digits_test, shared_models['CE'], False, 'fgsm', 10,
      extra=['--results_dir=%s' % results, '--eps=0.1'])))
  one_error(proc, NO_SPACE, repr(os.path.join(str(results), 'fgsm_mnist', 'CE',
                                              'entropy_nor')))
  assert files_below(results) == []


def test_atomic_write_on_a_full_disk_names_the_file_and_removes_its_temporary(tmp_path,
                                                                             monkeypatch):
  def full_disk(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  monkeypatch.setattr(os, 'fsync', full_disk)
  path = str(tmp_path / 'out.json')
  with pytest.raises(OSError) as raised:
    io_utils.atomic_write_json(path, {'a': 1})
  assert raised.value.errno == errno.ENOSPC and raised.value.filename == path
  assert io_utils.os_error_text(raised.value) == '%s: %r' % (NO_SPACE, path)
  assert os.listdir(str(tmp_path)) == []


def test_a_failed_result_folder_write_removes_the_files_it_wrote(tmp_path, monkeypatch):
  real, calls = io_utils.atomic_write_bytes, []

  def fails_third(path, data):
    calls.append(path)
    if len(calls) == 3:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    return real(path, data)
  monkeypatch.setattr(io_utils, 'atomic_write_bytes', fails_third)
  directory = str(tmp_path / 'fgsm_mnist' / 'CE')
  with pytest.raises(OSError):
    result_files.save_attack_results(directory, _arrays(4), _summary(4))
  assert os.listdir(directory) == []


def test_tensorflow_write_errors_map_to_the_file_meant(tmp_path):
  log_root = str(tmp_path / 'model')
  hexname = '0123456789abcdef' * 2
  for raw, meant in [
      ('graph.pbtxt.tmp' + hexname, 'graph.pbtxt'),
      ('model.ckpt-5.meta.tmp' + hexname, 'model.ckpt-5.meta'),
      ('model.ckpt-5_temp/part-00001-of-00002.data-00000-of-00001.tempstate123',
       'model.ckpt-5'),
      ('checkpoint.tmp' + hexname, 'checkpoint')]:
    error = tf.errors.ResourceExhaustedError(
        None, None, 'Graph execution error:\n\n%s; %s\n\t [[{{node save/SaveV2}}]]'
        % (os.path.join(log_root, raw), NO_SPACE))
    assert training.failed_file(error, [log_root]) == (os.path.join(log_root, meant), NO_SPACE)
  elsewhere = tf.errors.ResourceExhaustedError(None, None, '/other/x; %s' % NO_SPACE)
  assert training.failed_file(elsewhere, [log_root]) is None
  oom = tf.errors.ResourceExhaustedError(None, None, 'OOM when allocating tensor')
  assert training.failed_file(oom, [log_root]) is None

  os.makedirs(os.path.join(log_root, 'model.ckpt-5_temp'))
  for name in ('graph.pbtxt.tmp' + hexname, 'x.index.tempstate99', 'keep_temp', 'graph.pbtxt'):
    with open(os.path.join(log_root, name), 'w') as f:
      f.write('x')
  training.remove_partial_writes(log_root)
  assert sorted(os.listdir(log_root)) == ['graph.pbtxt', 'keep_temp']


# ---- 4. a checksum error names the run ---------------------------------------------------


def _arrays(n):
  labels = np.arange(n) % 10
  feats = np.zeros((n, 64))
  return {'labels_true': labels, 'labels_nor': labels, 'labels_adv': (labels + 1) % 10,
          'confidence_nor': np.ones(n), 'confidence_adv': np.ones(n),
          'entropy_nor': np.ones(n), 'entropy_adv': np.ones(n), 'logits_nor': feats,
          'logits_adv': feats, 'L2_distance': np.ones(n),
          'nor_img': np.zeros((n, 28, 28, 1), np.float32),
          'adv_img': np.zeros((1, n, 28, 28, 1), np.float32)}


def _summary(n):
  return {'attack': 'fgsm', 'dataset': 'mnist', 'model': 'CE', 'num_examples': n,
          'num_rounds': 1, 'eps': [0.1],
          'provenance': provenance.record(
              {'name': 'CE', 'checkpoint': 'x', 'global_step': 1, 'fingerprint': 'f' * 64},
              [], {'shard_index': 0})}


def test_checksum_error_names_the_run_id(tmp_path, shared_models, digits_test):
  results = tmp_path / 'results'
  shard = os.path.join(result_files.attack_dir('fgsm', 'mnist', False,
                                               results_dir=str(results)),
                       'shards', '0_of_2')
  summary = result_files.save_attack_results(shard, _arrays(3), _summary(3))
  run = result_files.run_id(summary)
  with open(os.path.join(shard, 'labels_adv'), 'a') as f:
    f.write('7\n')
  with pytest.raises(result_files.ResultsError, match=run):
    result_files.load_verified_summary(shard)
  before = tree(tmp_path)
  proc = run_script(attack_args(digits_test, shared_models['CE'], False, 'fgsm', 3, extra=[
      '--results_dir=%s' % results, '--mode=merge_shards', '--num_shards=2', '--eps=0.1']))
  error = one_error(proc, shard, 'labels_adv', 'checksum', '(%s)' % run)
  assert '(None)' not in error
  assert tree(tmp_path) == before


# ---- 7. a model folder copied elsewhere --------------------------------------------------


def _state_file(log_root, *entries):
  with open(os.path.join(str(log_root), checkpoints.STATE_FILE), 'w') as f:
    f.write('model_checkpoint_path: "%s"\n' % entries[-1])
    for entry in entries:
      f.write('all_model_checkpoint_paths: "%s"\n' % entry)


def test_checkpoint_entries_resolve_inside_log_root(tmp_path):
  log_root, other = tmp_path / 'model', tmp_path / 'other'
  for folder in (log_root, other):
    folder.mkdir()
    for step in (1, 2):
      (folder / ('model.ckpt-%d.index' % step)).write_bytes(b'')
  inside = os.path.join(str(log_root), 'model.ckpt-1')
  _state_file(log_root, inside, 'model.ckpt-2')
  assert checkpoints.checkpoint_paths(str(log_root)) == (
      os.path.join(str(log_root), 'model.ckpt-2'), [inside, os.path.join(str(log_root),
                                                                         'model.ckpt-2')])
  _state_file(log_root, 'model.ckpt-3')  # listed, its files gone
  assert checkpoints.latest_checkpoint(str(log_root)) is None
  for outside in (os.path.join(str(other), 'model.ckpt-2'), '../other/model.ckpt-2'):
    _state_file(log_root, 'model.ckpt-1', outside)
    with pytest.raises(checkpoints.CheckpointError) as raised:
      checkpoints.latest_checkpoint(str(log_root))
    message = str(raised.value)
    assert os.path.join(str(log_root), 'checkpoint') in message and 'outside' in message
    assert '--log_root=%s' % log_root in message
  (log_root / 'checkpoint').write_text('not a state file {')
  with pytest.raises(checkpoints.CheckpointError, match='not a checkpoint state file'):
    checkpoints.latest_checkpoint(str(log_root))


def test_a_copied_model_folder_loads_its_own_files(tmp_path, shared_models, digits_train,
                                                   digits_test):
  original, copy = tmp_path / 'original', tmp_path / 'copy'
  shutil.copytree(shared_models['CE'], str(original))
  subprocess.run(['cp', '-r', str(original), str(copy)], check=True)
  shutil.rmtree(str(original))  # whatever the copy loads, it is not the original's files
  eval_dir = tmp_path / 'eval'
  proc = run_script(['test_nor.py', '--eval_data_path=%s' % digits_test,
                     '--eval_dir=%s' % eval_dir, '--eval_once']
                    + model_flags(copy, False))
  assert proc.returncode == 0, describe(proc)
  summary = result_files.load_verified_summary(str(eval_dir), result_files.CLEAN_RESULT)
  assert summary['checkpoint'] == os.path.join(str(copy), 'model.ckpt-%d'
                                               % SHARED_TRAIN_STEPS)
  proc = run_script(train_args(digits_train, copy, SHARED_TRAIN_STEPS + 2, rce=False,
                               extra=['--test_every_steps=0']))
  assert proc.returncode == 0, describe(proc)
  assert 'resuming from %s at step %d' % (os.path.join(str(copy), 'model.ckpt-%d'
                                                       % SHARED_TRAIN_STEPS),
                                          SHARED_TRAIN_STEPS) in proc.stderr, describe(proc)
  assert checkpoints.checkpoint_step(checkpoints.latest_checkpoint(str(copy))) == (
      SHARED_TRAIN_STEPS + 2)
  assert not os.path.exists(str(original))
