"""Tests of training.py (devices, towers, averaged gradients, schedule), and of train.py and
test_nor.py end to end: the README commands on the bundled digits data (CPU)."""
import glob
import logging
import os
import re
import signal
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import describe, popen_script, run_script, train_args  # pylint: disable=g-bad-import-order
from rce import placement
from rce.model import evaluation
from rce.model import checkpoints  # pylint: disable=g-bad-import-order
import dataset_input
import resnet_model
from rce.training import training

tf.compat.v1.disable_eager_execution()
tf1 = tf.compat.v1

SMALL_RCE = resnet_model.default_hparams(num_residual_units=1, RCE_train=True)
TRAIN_STEPS = 300  # the shared RCE model; reaches ~0.96 test precision at 200 steps


# ---- devices and towers ------------------------------------------------------------------


def test_tower_devices_fall_back_to_virtual_cpus_with_a_warning(caplog):
  with caplog.at_level(logging.WARNING):
    devices, config = placement.tower_devices(2, gpus_present=0)
  assert devices == ['/cpu:0', '/cpu:1']
  assert config.device_count['CPU'] == 2
  assert config.allow_soft_placement
  warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
  assert any('virtual CPU' in r.getMessage() and '--num_gpus=2' in r.getMessage()
             for r in warnings), [r.getMessage() for r in caplog.records]


def test_tower_devices_cpu_and_gpus():
  devices, config = placement.tower_devices(0, gpus_present=0)
  assert devices == ['/cpu:0'] and 'CPU' not in config.device_count
  devices, config = placement.tower_devices(2, gpus_present=4)
  assert devices == ['/gpu:0', '/gpu:1'] and 'CPU' not in config.device_count
  with pytest.raises(ValueError, match='num_gpus'):
    placement.tower_devices(-1, gpus_present=0)


def _fixed_batch(batch=4, size=8, seed=0):
  rng = np.random.RandomState(seed)
  images = rng.uniform(-0.5, 0.5, (batch, size, size, 1)).astype(np.float32)
  labels = np.eye(10, dtype=np.float32)[rng.randint(0, 10, batch)]
  return images, labels


def test_averaged_tower_gradients_equal_gradient_of_mean_tower_loss():
  devices, config = placement.tower_devices(2, gpus_present=0)
  x, y = _fixed_batch()
  with tf.Graph().as_default() as graph:
    tf1.set_random_seed(0)
    losses, tower_grads, logits, updates = training.build_towers(
        SMALL_RCE, tf.constant(x), tf.constant(y), devices)
    assert len(losses) == 2 and len(tower_grads) == 2
    assert logits.shape.as_list() == [4, 10]
    assert updates  # BN updates of tower 0
    averaged = training.average_gradients(tower_grads)
    variables = [v for _, v in averaged]
    assert variables == tf1.trainable_variables()
    assert all(g is not None for g, _ in averaged)
    reference = tf.gradients(tf.add_n(losses) / 2.0, variables)
    convs = [op for op in graph.get_operations() if op.type == 'Conv2D']
    assert {op.name.split('/')[0] for op in convs} == {'tower_0', 'tower_1'}
    for op in convs:  # tower i's convolutions run on virtual CPU i
      assert op.device.endswith('CPU:%s' % op.name[len('tower_')]), (op.name, op.device)
    with tf1.Session(config=config) as sess:
      assert any(d.name.endswith('CPU:1') for d in sess.list_devices())
      sess.run(tf1.global_variables_initializer())
      got, ref, per_tower, tower_losses = sess.run(
          [[g for g, _ in averaged], reference, [[g for g, _ in t] for t in tower_grads],
           losses])
  assert tower_losses[0] != pytest.approx(tower_losses[1])  # the towers saw different data
  for var, a, r, g0, g1 in zip(variables, got, ref, per_tower[0], per_tower[1]):
    scale = np.abs(r).max()
    np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-5 * scale + 1e-12, err_msg=var.op.name)
    assert np.linalg.norm(a - r) <= 1e-5 * np.linalg.norm(r) + 1e-12, var.op.name
    np.testing.assert_allclose(a, (g0 + g1) / 2, rtol=1e-5, atol=1e-6 * scale + 1e-12)
  assert not np.allclose(per_tower[0][-2], per_tower[1][-2])  # logit/DW differs per tower


def test_train_graph_two_towers_one_sgd_step():
  devices, config = placement.tower_devices(2, gpus_present=0)
  hps = SMALL_RCE._replace(optimizer='sgd')
  x, y = _fixed_batch(seed=1)
  with tf.Graph().as_default():
    tf1.set_random_seed(1)
    graph = training.build_train_graph(hps, dataset_input.get_spec('mnist'),
                                       tf.constant(x), tf.constant(y), devices)
    grads = [g for g, _ in graph.grads_and_vars]
    variables = [v for _, v in graph.grads_and_vars]
    with tf1.Session(config=config) as sess:
      sess.run(tf1.global_variables_initializer())
      before, g, losses, lr = sess.run([variables, grads, graph.tower_losses,
                                        graph.learning_rate])
      _, loss = sess.run([graph.train_op, graph.loss])
      after, step = sess.run([variables, graph.global_step])
  assert step == 1 and lr == pytest.approx(0.1)
  assert loss == pytest.approx(np.mean(losses), rel=1e-5)
  for var, b, gv, a in zip(variables, before, g, after):
    np.testing.assert_allclose(a, b - 0.1 * gv, rtol=1e-4, atol=1e-6, err_msg=var.op.name)


def test_batch_that_does_not_divide_over_towers_is_rejected():
  devices, _ = placement.tower_devices(2, gpus_present=0)
  x, y = _fixed_batch(batch=5)
  with tf.Graph().as_default():
    with pytest.raises(ValueError, match='divide'):
      training.build_towers(SMALL_RCE, tf.constant(x), tf.constant(y), devices)


def test_precision_uses_the_flip():
  logits = np.random.RandomState(2).normal(size=(20, 10)).astype(np.float32)
  argmin = np.eye(10, dtype=np.float32)[np.argmin(logits, 1)]
  with tf.Graph().as_default(), tf1.Session() as sess:
    flipped = resnet_model.flip_logits(tf.constant(logits), True)  # an RCE model's predictions
    assert sess.run(evaluation.precision(flipped, tf.constant(argmin))) == 1.0
    assert sess.run(evaluation.precision(tf.constant(logits), tf.constant(argmin))) == 0.0


@pytest.mark.parametrize('dataset,steps_and_rates', [
    # Matches the original's hook: the update at global step 10000 still uses 0.1.
    ('mnist', [(0, 0.1), (10000, 0.1), (10001, 0.01), (15001, 0.001), (20001, 1e-4),
               (50000, 1e-4)]),
    ('cifar10', [(0, 0.1), (40001, 0.01), (60001, 0.001), (80001, 1e-4)]),
])
def test_learning_rate_schedule(dataset, steps_and_rates):
  with tf.Graph().as_default(), tf1.Session() as sess:
    step = tf1.placeholder(tf.int64, [])
    lr = training.learning_rate(dataset_input.get_spec(dataset), step)
    for value, rate in steps_and_rates:
      assert sess.run(lr, {step: value}) == pytest.approx(rate), value


def test_optimizers():
  with tf.Graph().as_default():
    assert isinstance(training.make_optimizer('sgd', 0.1), tf1.train.GradientDescentOptimizer)
    assert isinstance(training.make_optimizer('mom', 0.1), tf1.train.MomentumOptimizer)
    assert isinstance(training.make_optimizer('adam', 0.1), tf1.train.AdamOptimizer)
    assert isinstance(training.make_optimizer('rmsprop', 0.1), tf1.train.RMSPropOptimizer)
    with pytest.raises(ValueError, match='Optimizer'):
      training.make_optimizer('adagrad', 0.1)


# ---- end to end: the README commands -----------------------------------------------------


def eval_args(test_file, log_root, rce=True):
  return ['test_nor.py', '--eval_data_path=%s' % test_file, '--log_root=%s' % log_root,
          '--eval_dir=%s' % os.path.join(str(log_root), 'eval'), '--dataset=mnist',
          '--num_gpus=1', '--num_residual_units=1', '--mode=eval', '--RCE_train=%s' % rce,
          '--eval_once']


def final_step(log_root):
  path = checkpoints.latest_checkpoint(str(log_root))
  assert path is not None, 'no checkpoint in %s' % log_root
  return checkpoints.checkpoint_step(path)


@pytest.fixture(scope='module')
def rce_model(tmp_path_factory, digits_train):
  """One small RCE ResNet trained with the README command, shared by the tests below."""
  log_root = tmp_path_factory.mktemp('models_mnist') / 'resnet8'
  proc = run_script(train_args(digits_train, log_root, TRAIN_STEPS, extra=[
      '--checkpoint_steps=100', '--log_steps=50', '--test_every_steps=100',
      '--test_batches=1']), timeout=400)
  return log_root, proc


def test_readme_train_command_checkpoints_exactly_at_total_steps(rce_model):
  log_root, proc = rce_model
  assert proc.returncode == 0, describe(proc)
  assert final_step(log_root) == TRAIN_STEPS
  state = tf.train.get_checkpoint_state(str(log_root))
  steps = sorted(checkpoints.checkpoint_step(p) for p in state.all_model_checkpoint_paths)
  assert {100, 200, 300} <= set(steps), steps
  params = re.search(r'parameters: (\d+), FLOPs per image: (\d+)', proc.stdout)
  assert params and int(params.group(1)) > 0 and int(params.group(2)) > 0, describe(proc)
  assert re.search(r'step 300: test precision [0-9.]+ on 100 images', proc.stderr), describe(proc)
  assert re.search(r'steps/s', proc.stderr), describe(proc)
  assert glob.glob(os.path.join(str(log_root), 'train', 'events.out.tfevents.*'))


def test_progress_log_at_multiples_of_log_steps(rce_model):
  """Progress lines come at steps 50, 100, ... with --log_steps=50, as the original's
  LoggingTensorHook logged them (not 51, 101, ...: the first run must not shift them)."""
  _, proc = rce_model
  steps = [int(s) for s in re.findall(r'step (\d+): loss', proc.stderr)]
  assert steps, describe(proc)
  assert all(s % 50 == 0 for s in steps), 'BUG: progress logged at steps %s' % steps


def test_readme_eval_command_precision_above_chance(rce_model, digits_test):
  log_root, train_proc = rce_model
  assert train_proc.returncode == 0, describe(train_proc)
  proc = run_script(eval_args(digits_test, log_root), timeout=200)
  assert proc.returncode == 0, describe(proc)
  match = re.search(r'^precision: ([0-9.]+)', proc.stdout, re.M)
  assert match, describe(proc)
  precision = float(match.group(1))
  assert precision >= 0.5, describe(proc)
  assert re.search(r'images: 359, step: %d' % TRAIN_STEPS, proc.stdout), describe(proc)
  assert glob.glob(os.path.join(str(log_root), 'eval', 'events.out.tfevents.*'))

  # Without the flip (evaluated as a CE model) the same checkpoint is far below: the flip is
  # what makes an RCE model's predictions right.
  unflipped = run_script(eval_args(digits_test, log_root, rce=False), timeout=200)
  assert unflipped.returncode == 0, describe(unflipped)
  wrong = float(re.search(r'^precision: ([0-9.]+)', unflipped.stdout, re.M).group(1))
  assert wrong < precision - 0.4, (precision, wrong)


def test_eval_once_without_checkpoint_is_a_clear_error(tmp_path, digits_test):
  log_root = tmp_path / 'empty_model'
  log_root.mkdir()
  proc = run_script(eval_args(digits_test, log_root), timeout=200)
  assert proc.returncode != 0, describe(proc)
  assert 'error:' in proc.stderr and 'no checkpoint' in proc.stderr, describe(proc)
  assert str(log_root) in proc.stderr, describe(proc)
  assert 'precision:' not in proc.stdout


def test_two_towers_on_virtual_cpus_train_and_checkpoint(tmp_path, digits_train):
  log_root = tmp_path / 'two_towers'
  proc = run_script(train_args(digits_train, log_root, 20, num_gpus=2, extra=[
      '--checkpoint_steps=10', '--log_steps=10', '--test_every_steps=0']), timeout=300)
  assert proc.returncode == 0, describe(proc)
  assert 'virtual CPU' in proc.stderr, describe(proc)
  assert 'training on /cpu:0, /cpu:1' in proc.stderr, describe(proc)
  assert final_step(log_root) == 20


def _wait_for_checkpoint_after_step_0(proc, log_root, timeout):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      return None
    path = checkpoints.latest_checkpoint(str(log_root))
    if path:
      try:
        if checkpoints.checkpoint_step(path) > 0:
          return path
      except (tf.errors.OpError, ValueError):
        pass  # caught between the files of a checkpoint; look again
    time.sleep(0.25)
  return None


def test_killed_training_resumes_from_its_checkpoint(tmp_path, digits_train):
  log_root = tmp_path / 'resume'
  out, err = open(str(tmp_path / 'first.out'), 'w'), open(str(tmp_path / 'first.err'), 'w')
  try:
    proc = popen_script(train_args(digits_train, log_root, 100000, extra=[
        '--checkpoint_steps=15', '--log_steps=15', '--test_every_steps=0']),
                        stdout=out, stderr=err)
    try:
      found = _wait_for_checkpoint_after_step_0(proc, log_root, timeout=240)
    finally:
      if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
      proc.wait(timeout=60)
  finally:
    out.close()
    err.close()
  with open(str(tmp_path / 'first.err')) as f:
    first_err = f.read()
  assert found, 'no checkpoint after step 0 appeared (rc=%s)\n%s' % (proc.returncode,
                                                                     first_err[-4000:])
  assert proc.returncode == -signal.SIGKILL
  killed_at = final_step(log_root)  # the latest complete checkpoint after the kill
  assert 0 < killed_at < 100000 and killed_at % 15 == 0

  new_total = killed_at + 20
  proc = run_script(train_args(digits_train, log_root, new_total, extra=[
      '--checkpoint_steps=15', '--log_steps=15', '--test_every_steps=0']), timeout=300)
  assert proc.returncode == 0, describe(proc)
  match = re.search(r'resuming from (\S+) at step (\d+)', proc.stderr)
  assert match, describe(proc)
  assert int(match.group(2)) == killed_at
  assert match.group(1).endswith('model.ckpt-%d' % killed_at)
  assert final_step(log_root) == new_total

  # Already there: a rerun does nothing and keeps the checkpoint.
  proc = run_script(train_args(digits_train, log_root, new_total), timeout=300)
  assert proc.returncode == 0, describe(proc)
  assert 'nothing to do' in proc.stderr, describe(proc)
  assert final_step(log_root) == new_total


def test_subprocess_helper_sees_this_python():
  """The scripts run under the interpreter and PYTHONPATH of the test run."""
  proc = run_script(['-c', 'import sys, os; print(sys.executable); '
                           'print(os.environ.get("PYTHONPATH", ""))'], timeout=60)
  assert proc.returncode == 0
  lines = proc.stdout.splitlines()
  assert os.path.realpath(lines[0]) == os.path.realpath(sys.executable)
  assert lines[1] == os.environ.get('PYTHONPATH', '')


def test_user_learning_rate_schedule_read_back_from_the_summaries(tmp_path, digits_train):
  """--lr_boundaries=100,150 --lr_values=0.1,0.01,0.001: the update at global step g uses
  0.1 up to g = 100, 0.01 up to 150, then 0.001 (the summary of the run that makes step
  g + 1 records the rate of that update)."""
  log_root = tmp_path / 'lr'
  proc = run_script(train_args(digits_train, log_root, 152, rce=True, num_gpus=0, extra=[
      '--batch_size=8', '--summary_steps=1', '--checkpoint_steps=1000', '--test_every_steps=0',
      '--lr_boundaries=100,150', '--lr_values=0.1,0.01,0.001']))
  assert proc.returncode == 0, describe(proc)
  rates = {}
  for path in glob.glob(str(log_root / 'train' / 'events.*')):
    for event in tf1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == 'learning_rate':
          rates[event.step - 1] = value.simple_value  # the update at global step event.step-1
  expected = {0: 0.1, 99: 0.1, 100: 0.1, 101: 0.01, 150: 0.01, 151: 0.001}
  assert {g: rates.get(g) for g in expected} == pytest.approx(expected), rates
