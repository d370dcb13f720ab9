"""No poisoned checkpoints: training never writes a non-finite one and says which is the last
good one; every reader refuses a non-finite checkpoint (issue "Results you can trust").
"""
import os
import re
import shutil

import numpy as np
import tensorflow as tf

from rce.model import checkpoints
from tests.helpers import (REPO_ROOT, attack_args, describe, model_flags,  # pylint: disable=g-bad-import-order
                      run_parallel, run_script, train_args)

tf1 = tf.compat.v1


def _checkpoint_paths(log_root):
  return sorted({os.path.join(str(log_root), n[:-len('.index')])
                 for n in os.listdir(str(log_root)) if n.endswith('.index')})


def test_diverging_training_keeps_only_finite_checkpoints_and_resumes(tmp_path, digits_train):
  log_root = tmp_path / 'diverging'
  # After step 4 the rate overflows float32: the next update makes the variables non-finite.
  extra = ['--checkpoint_steps=3', '--test_every_steps=0', '--log_steps=1',
           '--lr_boundaries=4', '--lr_values=0.1,1e300']
  proc = run_script(train_args(digits_train, log_root, 9, rce=False, num_gpus=0, extra=extra))
  assert proc.returncode != 0, describe(proc)
  error = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert len(error) == 1, describe(proc)
  assert 'non-finite' in error[0] or 'NaN' in error[0], error
  match = re.search(r'the last finite checkpoint is (\S+) \(step (\d+)\)', error[0])
  assert match, error
  named, step = match.group(1), int(match.group(2))
  assert step == 3, error  # the checkpoint at 6 would have held the non-finite variables
  saved = _checkpoint_paths(log_root)
  assert saved and named == saved[-1] == checkpoints.latest_checkpoint(str(log_root)), saved
  for path in saved:
    info = checkpoints.inspect(path)
    assert not info.nonfinite, (path, info.nonfinite)
    assert info.step <= step

  resumed = run_script(train_args(digits_train, log_root, 9, rce=False, num_gpus=0,
                                  extra=['--checkpoint_steps=3', '--test_every_steps=0']))
  assert resumed.returncode == 0, describe(resumed)
  assert 'resuming from %s at step %d' % (named, step) in resumed.stderr, describe(resumed)
  final = checkpoints.inspect(checkpoints.latest_checkpoint(str(log_root)))
  assert final.step == 9 and not final.nonfinite


def _poison(log_root):
  """Writes a newer checkpoint whose final BN moving variance is infinite (loss stays finite
  on most inputs; only the variables betray it). Returns its path."""
  reader = tf.train.load_checkpoint(checkpoints.latest_checkpoint(log_root))
  graph = tf.Graph()
  with graph.as_default():
    variables = []
    for name in sorted(reader.get_variable_to_shape_map()):
      value = reader.get_tensor(name)
      if name == 'unit_last/final_bn/moving_variance':
        value = np.full_like(value, np.inf)
      if name == 'global_step':
        value = value + 1
        step = int(value)
      variables.append(tf1.Variable(value, name=name))
    with tf1.Session(graph=graph) as sess:
      sess.run(tf1.global_variables_initializer())
      return tf1.train.Saver(variables).save(sess, os.path.join(log_root, 'model.ckpt'),
                                             global_step=step)


def test_readers_and_resume_refuse_a_non_finite_checkpoint(shared_models, tmp_path,
                                                           digits_train, digits_test):
  log_root = str(tmp_path / 'poisoned')
  shutil.copytree(shared_models['CE'], log_root)
  path = _poison(log_root)
  info = checkpoints.inspect(path)
  assert info.nonfinite == ['unit_last/final_bn/moving_variance']

  cwds = [tmp_path / name for name in ('test_nor', 'test_adv', 'train')]
  for cwd in cwds:
    cwd.mkdir()
  train = train_args(digits_train, log_root, info.step + 10, rce=False)
  jobs = [
      [os.path.join(REPO_ROOT, 'test_nor.py'), '--eval_data_path=%s' % digits_test,
       '--mode=eval', '--eval_once', '--eval_dir=%s' % (tmp_path / 'eval')]
      + model_flags(log_root, False),
      attack_args(digits_test, log_root, False, 'fgsm', 20,
                  extra=['--results_dir=%s' % cwds[1]]),
      [os.path.join(REPO_ROOT, train[0])] + train[1:],
  ]
  procs = run_parallel(jobs, cwds=[str(c) for c in cwds])
  for proc, cwd in zip(procs, cwds):
    assert proc.returncode != 0, describe(proc)
    assert 'non-finite' in proc.stderr and path in proc.stderr, describe(proc)
    assert 'unit_last/final_bn/moving_variance' in proc.stderr, describe(proc)
    assert os.listdir(str(cwd)) == [], describe(proc)
  assert not os.path.exists(str(tmp_path / 'eval' / 'precision.json'))
  assert checkpoints.latest_checkpoint(log_root) == path  # the resume wrote nothing
