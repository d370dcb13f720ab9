"""Mixed-precision training (--precision): float32 variables and loss, low-precision compute,
dynamic loss scaling for float16, and a bfloat16 digits model as accurate as the fp32 one."""
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import SHARED_TRAIN_STEPS, describe, run_script, train_args  # pylint: disable=g-bad-import-order
import dataset_input  # pylint: disable=g-bad-import-order
import resnet_model
from rce import placement
from rce.results import result_files
from rce.training import training

tf.compat.v1.disable_eager_execution()
tf1 = tf.compat.v1

HPS = resnet_model.default_hparams(num_residual_units=1, optimizer='sgd')


def _batch(batch=8, seed=0):
  rng = np.random.RandomState(seed)
  x = rng.uniform(-0.5, 0.5, size=(batch, 28, 28, 1)).astype(np.float32)
  return x, np.eye(10, dtype=np.float32)[rng.randint(0, 10, size=batch)]


def _train_graph(precision_mode, x, y):
  devices, config = placement.tower_devices(0)
  graph = training.build_train_graph(HPS, dataset_input.get_spec('mnist'), tf.constant(x),
                                     tf.constant(y), devices, precision_mode=precision_mode)
  return graph, config


def _conv_dtypes():
  return {op.get_attr('T') for op in tf1.get_default_graph().get_operations()
          if op.type == 'Conv2D'}


@pytest.mark.parametrize('mode,dtype', [('fp32', tf.float32), ('mixed_bfloat16', tf.bfloat16),
                                        ('mixed_float16', tf.float16)])
def test_variables_stay_float32_with_the_fp32_names_and_convs_compute_low(mode, dtype):
  x, y = _batch()
  with tf.Graph().as_default():
    _train_graph('fp32', x, y)
    fp32_names = sorted(v.op.name for v in resnet_model.model_variables())
  with tf.Graph().as_default():
    graph, config = _train_graph(mode, x, y)
    variables = resnet_model.model_variables()
    assert sorted(v.op.name for v in variables) == fp32_names  # checkpoints keep their layout
    assert {v.dtype.base_dtype for v in variables} == {tf.float32}
    assert _conv_dtypes() == {dtype}
    assert graph.loss.dtype == tf.float32
    with tf1.Session(config=config) as sess:
      sess.run(tf1.global_variables_initializer())
      losses = [sess.run([graph.train_op, graph.loss])[1] for _ in range(3)]
      step = sess.run(graph.global_step)
  assert np.all(np.isfinite(losses)) and step == 3
  assert losses[-1] < losses[0]


def test_float16_scales_the_loss_and_skips_a_step_with_non_finite_gradients():
  x, y = _batch(seed=3)
  with tf.Graph().as_default():
    graph, config = _train_graph('mixed_float16', x, y)
    scale_vars = [v for v in tf1.global_variables() if 'loss_scale' in v.op.name]
    assert scale_vars, 'mixed_float16 keeps its dynamic loss scale in a variable'
    scale = [v for v in scale_vars if v.dtype.base_dtype == tf.float32][0]
    weights = tf1.trainable_variables()  # BN moving statistics are updated anyway
    with tf1.Session(config=config) as sess:
      sess.run(tf1.global_variables_initializer())
      assert sess.run(scale) == 2.0 ** 15  # DynamicLossScale's initial scale
      sess.run(graph.train_op)
      assert sess.run(graph.global_step) == 1
      # A scale of 1e38 overflows float16 in the backward pass: the step must be skipped
      # (weights and global step unchanged) and the scale halved.
      sess.run(scale.assign(1e38))
      before = sess.run(weights)
      sess.run(graph.train_op)
      after, step, new_scale = sess.run([weights, graph.global_step, scale])
  assert step == 1 and new_scale == pytest.approx(5e37)
  for b, a in zip(before, after):
    np.testing.assert_array_equal(a, b)


def test_reproduce_offers_exactly_the_precisions_of_train():
  import reproduce  # pylint: disable=g-import-not-at-top
  args = reproduce.parse_args(['--tiny', '--precision=mixed_bfloat16', '--jobs=1',
                               '--num_gpus=0'])
  assert args.precision == 'mixed_bfloat16'
  choices = next(a.choices for a in reproduce.build_parser()._actions  # pylint: disable=protected-access
                 if a.dest == 'precision')
  assert list(choices) == list(training.PRECISIONS)


def _clean_error(log_root, rce, test_file):
  eval_dir = os.path.join(str(log_root), 'eval')
  proc = run_script(['test_nor.py', '--eval_data_path=%s' % test_file,
                     '--log_root=%s' % log_root, '--eval_dir=%s' % eval_dir,
                     '--dataset=mnist', '--num_gpus=1', '--num_residual_units=1',
                     '--mode=eval', '--RCE_train=%s' % rce, '--eval_once'])
  assert proc.returncode == 0, describe(proc)
  summary = result_files.load_verified_summary(eval_dir, result_files.CLEAN_RESULT)
  assert summary['checkpoint_step'] == SHARED_TRAIN_STEPS
  return 1.0 - summary['precision']


def test_bfloat16_digits_model_within_one_point_of_fp32(tmp_path, shared_models, digits_train,
                                                        digits_test):
  """The shared CE model (fp32) and the same command with --precision=mixed_bfloat16: same
  steps, seed and data; their clean test errors (evaluated in float32) differ by <= 1 point."""
  log_root = tmp_path / 'CE_bf16'
  extra = ['--checkpoint_steps=%d' % SHARED_TRAIN_STEPS, '--test_every_steps=0',
           '--log_steps=100', '--precision=mixed_bfloat16']
  proc = run_script(train_args(digits_train, log_root, SHARED_TRAIN_STEPS, rce=False,
                               extra=extra))
  assert proc.returncode == 0, describe(proc)
  assert 'mixed_bfloat16' in proc.stderr  # the log says which arithmetic trained it
  fp32_error = _clean_error(shared_models['CE'], False, digits_test)
  bf16_error = _clean_error(log_root, False, digits_test)
  assert bf16_error < 0.1, 'the bfloat16 model did not learn (error %.3f)' % bf16_error
  assert abs(bf16_error - fp32_error) <= 0.01, (fp32_error, bf16_error)
