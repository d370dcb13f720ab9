"""Training throughput of ResNet-32: ours (training.py / resnet_model.py) vs the original graph.

One training step = forward + backward + momentum apply + BN moving-average updates, loss =
CE + weight decay 2e-4. Both graphs are trained on the same fixed in-memory random batch (a
graph constant, so no input reading is measured), with the same session config, and are timed
in alternating blocks so machine noise hits both; the medians of the blocks are reported.

"The original way" is the tensorflow/models research/resnet pre-activation ResNet as the
paper's code built it: leaky ReLU through tf.where(tf.less(x, 0), leakiness * x, x), batch norm
through tf.nn.moments + tf.nn.batch_normalization with assign_moving_average(..., 0.9)
updates. It is built below with the same variable structure and order, so before timing the
weights of ours are copied into it and a train-mode forward pass (loss, logits) and one full
training step (every variable after it) are compared.

Besides wall-clock images/s (the headline, median of the blocks) the script prints images per
CPU-second of this process, which moves less when other processes share the cores. --profile N
traces N steps of each graph (ops serialized) and prints where the time goes.

Two more references are measured in the same run:

* Keras 3 `model.fit` (benchmarks/keras_resnet.py): the same ResNet built with the functional
  API (463,866 trainable parameters for mnist ResNet-32, checked against ours), SGD momentum
  0.9 lr 0.1, CE from logits + the same L2 weight decay, Keras defaults otherwise (no XLA on a
  CPU-only machine, steps_per_execution 1), trained with one `model.fit` call on
  tf.data.Dataset.from_tensors((images, labels)).repeat() of the same batch. It runs eagerly in
  this process (eager execution is never disabled here: our graphs live in their own tf.Graph
  objects and Sessions). Our weights are loaded into it first and a train-mode forward pass and
  one `train_on_batch` step are compared with ours. The timing is interleaved: a callback
  times every epoch (--keras_steps_per_epoch steps, default --steps) and, at each epoch end,
  runs one timed block of ours and of the original (and one SGEMM); epoch 0 (tracing, first
  runs) is not counted, and the medians over the other --blocks epochs are reported.
* SGEMM GFLOP/s of the machine: a --sgemm_n square float32 matmul (2048 by default) of two
  variables in a tf.compat.v1 Session with our session config (same thread pools), timed once
  per block between the training blocks (median reported, with the best run and the GFLOP per
  CPU-second of this process), and numpy's matmul for reference (--sgemm_runs runs after the
  timed blocks). Ours' training GFLOP/s (3x forward FLOPs per image) is reported as a fraction
  of the TF SGEMM median, of its best run, and per CPU-second (ours' images/CPU-s against the
  SGEMM's GFLOP/CPU-s), the figure that other processes on the cores disturb least: a
  2-thread GEMM split statically waits for its slower half whenever one core is taken.

  python benchmarks/train_throughput.py [--batch_size 128] [--steps 3] [--blocks 15] \
      [--warmup 3] [--num_residual_units 5] [--dataset mnist] [--profile N] \
      [--keras_steps_per_epoch N] [--no_keras] [--sgemm_n 2048] [--sgemm_runs 5]
"""
import argparse
import collections
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # pylint: disable=g-import-not-at-top

import dataset_input  # pylint: disable=g-import-not-at-top
import resnet_model  # pylint: disable=g-import-not-at-top
import training  # pylint: disable=g-import-not-at-top

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import keras_resnet  # pylint: disable=g-import-not-at-top  (imports keras; builds nothing)

tf1 = tf.compat.v1


class OriginalResNet(object):
  """research/resnet's ResNet (train mode), compact: the baseline graph."""

  def __init__(self, hps):
    self.hps = hps
    self.extra_train_ops = []

  def _conv(self, name, x, size, in_f, out_f, stride):
    with tf1.variable_scope(name):
      n = size * size * out_f
      kernel = tf1.get_variable('DW', [size, size, in_f, out_f], tf.float32,
                                initializer=tf1.random_normal_initializer(stddev=np.sqrt(2.0 / n)))
      return tf1.nn.conv2d(x, kernel, [1, stride, stride, 1], padding='SAME')

  def _relu(self, x):
    return tf1.where(tf.less(x, 0.0), self.hps.relu_leakiness * x, x, name='leaky_relu')

  def _batch_norm(self, name, x):
    with tf1.variable_scope(name):
      shape = [x.shape[-1]]
      beta = tf1.get_variable('beta', shape, tf.float32, tf1.constant_initializer(0.0))
      gamma = tf1.get_variable('gamma', shape, tf.float32, tf1.constant_initializer(1.0))
      mean, variance = tf.nn.moments(x, [0, 1, 2], name='moments')
      moving_mean = tf1.get_variable('moving_mean', shape, tf.float32,
                                     tf1.constant_initializer(0.0), trainable=False)
      moving_variance = tf1.get_variable('moving_variance', shape, tf.float32,
                                         tf1.constant_initializer(1.0), trainable=False)
      # moving_averages.assign_moving_average(v, value, 0.9) without zero-debias:
      # v -= (1 - decay) * (v - value).
      self.extra_train_ops.append(tf1.assign_sub(moving_mean, 0.1 * (moving_mean - mean)))
      self.extra_train_ops.append(
          tf1.assign_sub(moving_variance, 0.1 * (moving_variance - variance)))
      y = tf.nn.batch_normalization(x, mean, variance, beta, gamma, 0.001)
      y.set_shape(x.shape)
      return y

  def _residual(self, x, in_f, out_f, stride, activate_before_residual):
    if activate_before_residual:
      with tf1.variable_scope('shared_activation'):
        x = self._relu(self._batch_norm('init_bn', x))
        orig_x = x
    else:
      with tf1.variable_scope('residual_only_activation'):
        orig_x = x
        x = self._relu(self._batch_norm('init_bn', x))
    with tf1.variable_scope('sub1'):
      x = self._conv('conv1', x, 3, in_f, out_f, stride)
    with tf1.variable_scope('sub2'):
      x = self._relu(self._batch_norm('bn2', x))
      x = self._conv('conv2', x, 3, out_f, out_f, 1)
    with tf1.variable_scope('sub_add'):
      if in_f != out_f:
        orig_x = tf1.nn.avg_pool(orig_x, [1, stride, stride, 1], [1, stride, stride, 1], 'VALID')
        orig_x = tf.pad(orig_x, [[0, 0], [0, 0], [0, 0],
                                 [(out_f - in_f) // 2, (out_f - in_f) // 2]])
      x += orig_x
    return x

  def build(self, images, labels):
    """Returns (train_op, cost, logits)."""
    hps = self.hps
    with tf1.variable_scope('init'):
      x = self._conv('init_conv', images, 3, images.shape[-1], 16, 1)
    filters, strides = [16, 16, 32, 64], [1, 2, 2]
    for s in range(3):
      for i in range(hps.num_residual_units):
        with tf1.variable_scope('unit_%d_%d' % (s + 1, i)):
          x = self._residual(x, filters[s] if i == 0 else filters[s + 1], filters[s + 1],
                             strides[s] if i == 0 else 1, s == 0 and i == 0)
    with tf1.variable_scope('unit_last'):
      x = self._relu(self._batch_norm('final_bn', x))
      x = tf.reduce_mean(x, [1, 2])
    with tf1.variable_scope('logit'):
      w = tf1.get_variable('DW', [x.shape[1], hps.num_classes],
                           initializer=tf1.variance_scaling_initializer(1.0, 'fan_in', 'uniform'))
      b = tf1.get_variable('biases', [hps.num_classes], initializer=tf1.constant_initializer())
      logits = tf1.nn.xw_plus_b(x, w, b)
    with tf1.variable_scope('costs'):
      xent = tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
      cost = tf.reduce_mean(xent, name='xent')
      cost += hps.weight_decay_rate * tf.add_n(
          [tf.nn.l2_loss(v) for v in tf1.trainable_variables() if 'DW' in v.op.name])
    global_step = tf1.train.get_or_create_global_step()
    variables = tf1.trainable_variables()
    grads = tf.gradients(cost, variables)
    optimizer = tf1.train.MomentumOptimizer(tf.constant(hps.lrn_rate, tf.float32), 0.9)
    apply_op = optimizer.apply_gradients(zip(grads, variables), global_step=global_step,
                                         name='train_step')
    train_op = tf.group(apply_op, *self.extra_train_ops)
    return train_op, cost, logits


def build_ours(hps, spec, images_np, labels_np):
  graph = tf.Graph()
  with graph.as_default():
    tf1.set_random_seed(0)
    images, labels = tf.constant(images_np), tf.constant(labels_np)
    devices, config = training.tower_devices(0)
    tg = training.build_train_graph(hps, spec, images, labels, devices)
    logits = [op.outputs[0] for op in graph.get_operations()
              if op.name.endswith('logit/xw_plus_b')]
    assert len(logits) == 1, [t.name for t in logits]
    init = tf1.global_variables_initializer()
    variables = tf1.global_variables()
  return dict(graph=graph, config=config, train_op=tg.train_op, loss=tg.loss,
              logits=logits[0], init=init, variables=variables)


def build_original(hps, images_np, labels_np):
  graph = tf.Graph()
  with graph.as_default():
    tf1.set_random_seed(1)
    images, labels = tf.constant(images_np), tf.constant(labels_np)
    train_op, cost, logits = OriginalResNet(hps).build(images, labels)
    init = tf1.global_variables_initializer()
    variables = tf1.global_variables()
  return dict(graph=graph, train_op=train_op, loss=cost, logits=logits, init=init,
              variables=variables)


def model_vars(variables):
  """Network variables plus momentum slots, in creation order (no step / lr bookkeeping)."""
  return [v for v in variables if v.op.name.startswith(('init/', 'unit_', 'logit/'))]


def copy_weights(src_sess, src, dst_sess, dst):
  """Copies the variables of `src` into `dst`, matched by creation order (shapes checked)."""
  src_vars, dst_vars = model_vars(src['variables']), model_vars(dst['variables'])
  assert len(src_vars) == len(dst_vars), (len(src_vars), len(dst_vars))
  values = src_sess.run(src_vars)
  with dst['graph'].as_default():
    for sv, dv, value in zip(src_vars, dst_vars, values):
      assert sv.shape == dv.shape and sv.op.name == dv.op.name, (sv.op.name, dv.op.name)
      dv.load(value, dst_sess)
  return len(src_vars)


def time_block(sess, train_op, steps):
  """(wall seconds, CPU seconds of this process) of `steps` training steps."""
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(steps):
    sess.run(train_op)
  return time.perf_counter() - wall, time.process_time() - cpu


def profile(graphs, base_config, steps):
  """Per-op-type time of one training step (median over traced steps), ops serialized.

  Sessions with inter_op_parallelism_threads=1, so op times add up to the step instead of
  overlapping; each op still uses the default intra-op pool.
  """
  config = tf1.ConfigProto()
  config.CopyFrom(base_config)
  config.inter_op_parallelism_threads = 1
  sessions = []
  for name, model in graphs:
    sess = tf1.Session(graph=model['graph'], config=config)
    sess.run(model['init'])
    sess.run(model['train_op'])
    sessions.append((name, model, sess))
  per_op = {name: collections.defaultdict(list) for name, _ in graphs}
  counts = {}
  options = tf1.RunOptions(trace_level=tf1.RunOptions.FULL_TRACE)
  for _ in range(steps):
    for name, model, sess in sessions:
      metadata = tf1.RunMetadata()
      sess.run(model['train_op'], options=options, run_metadata=metadata)
      step, count = collections.Counter(), collections.Counter()
      for dev in metadata.step_stats.dev_stats:
        for node in dev.node_stats:
          label = node.timeline_label
          op = label.split(' = ')[1].split('(')[0] if ' = ' in label else node.node_name
          step[op] += node.all_end_rel_micros / 1e3
          count[op] += 1
      for op, ms in step.items():
        per_op[name][op].append(ms)
      counts[name] = count
  totals = {}
  for name, _, sess in sessions:
    sess.close()
    med = {op: statistics.median(v + [0.0] * (steps - len(v))) for op, v in per_op[name].items()}
    total = sum(med.values())
    conv = sum(ms for op, ms in med.items() if 'Conv2D' in op)
    n_conv = sum(n for op, n in counts[name].items() if 'Conv2D' in op)
    totals[name] = (total, conv)
    print('profile %-8s (inter_op=1, median of %d traced steps): ops %.0f ms, of which the %d '
          'convolution ops (fwd + both backprops) %.0f ms (%.0f%%), everything else %.0f ms'
          % (name, steps, total, n_conv, conv, 100 * conv / total, total - conv))
    top = sorted(med.items(), key=lambda kv: -kv[1])[:12]
    print('   ' + ', '.join('%s %.1f ms (%d)' % (op, ms, counts[name][op]) for op, ms in top))
  (t_ours, c_ours), (t_orig, _) = totals['ours'], totals['original']
  print('profile: traced-op ratio original/ours %.2fx; with every non-convolution op free the '
        'ceiling would be %.2fx; 1.5x needs ours\' non-convolution time <= %.0f ms (now %.0f)'
        % (t_orig / t_ours, t_orig / c_ours, t_orig / 1.5 - c_ours, t_ours - c_ours))
  return totals


def conv_forward_flops(hps, shape):
  """Forward FLOPs per image of the convolutions alone (2 * outputs * k * k * in_channels)."""
  h, w, c = shape
  flops = 2 * h * w * 9 * c * 16  # init conv
  in_f = 16
  for out_f, stride in zip((16, 32, resnet_model.FEATURE_DIM), resnet_model.STAGE_STRIDES):
    for i in range(hps.num_residual_units):
      s = stride if i == 0 else 1
      h, w = -(-h // s), -(-w // s)
      flops += 2 * h * w * 9 * (in_f * out_f + out_f * out_f)
      in_f = out_f
  return flops


def build_sgemm(config, n):
  """A Session running C = A @ B on two [n, n] float32 variables; returns (sess, matmul op)."""
  graph = tf.Graph()
  with graph.as_default():
    a = tf1.get_variable('a', [n, n], tf.float32, tf1.random_uniform_initializer(-1.0, 1.0))
    b = tf1.get_variable('b', [n, n], tf.float32, tf1.random_uniform_initializer(-1.0, 1.0))
    product = tf.matmul(a, b)  # variables, not constants: nothing for Grappler to fold
    init = tf1.global_variables_initializer()
  sess = tf1.Session(graph=graph, config=config)
  sess.run(init)
  return sess, product.op  # run as a target: the [n, n] result is not copied out


def time_sgemm(sess, op, n):
  """(GFLOP/s wall, GFLOP per CPU-second of this process) of one n x n x n matmul (2 n^3)."""
  wall, cpu = time.perf_counter(), time.process_time()
  sess.run(op)
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  return 2.0 * n ** 3 / wall / 1e9, 2.0 * n ** 3 / max(cpu, 1e-9) / 1e9


def numpy_sgemm(n, runs):
  """(median GFLOP/s of `runs` numpy float32 matmuls, BLAS name)."""
  rng = np.random.RandomState(0)
  a = rng.uniform(-1, 1, (n, n)).astype(np.float32)
  b = rng.uniform(-1, 1, (n, n)).astype(np.float32)
  out = np.empty((n, n), np.float32)
  np.matmul(a, b, out=out)  # warm-up (BLAS threads start)
  rates = []
  for _ in range(runs):
    start = time.perf_counter()
    np.matmul(a, b, out=out)
    rates.append(2.0 * n ** 3 / (time.perf_counter() - start) / 1e9)
  try:
    blas = np.__config__.CONFIG['Build Dependencies']['blas']['name']
  except Exception:  # pylint: disable=broad-except
    blas = 'unknown BLAS'
  return statistics.median(rates), blas


# Same-math tolerances: logits and loss (absolute), weights and BN moving averages after one
# step (absolute), first gradients (relative to each tensor's largest entry; see main).
FWD_TOL, STATE_TOL, GRAD_REL_TOL = 1e-4, 1e-3, 5e-2


def max_rel_diff(a, ref):
  """max |a - ref| relative to the largest |ref| entry."""
  return float(np.max(np.abs(a - ref)) / max(np.max(np.abs(ref)), 1e-12))


def keras_same_math(model, pairs, our_values, images_np, labels_np, ref):
  """Loads our (pre-step) weights into the Keras model and compares it with ours.

  Args:
    model, pairs: from keras_resnet.build (compiled).
    our_values: dict our variable name -> value before ours' first training step.
    images_np, labels_np: the batch.
    ref: dict with ours' train-mode 'loss', 'logits' and, after one training step, 'after'
      (our variable name -> value, momentum slots included), 'lr'.

  Returns:
    True when both checks pass.
  """
  import keras  # pylint: disable=g-import-not-at-top

  def load():
    for var, name in pairs:
      var.assign(our_values[name])

  load()
  logits = model(images_np, training=True)  # (also moves the BN moving averages: reloaded below)
  ce = keras.losses.CategoricalCrossentropy(from_logits=True)(labels_np, logits)
  loss = float(ce) + float(sum(float(l) for l in model.losses))
  d_logits = float(np.max(np.abs(keras.ops.convert_to_numpy(logits) - ref['logits'])))
  d_loss = abs(loss - float(ref['loss']))
  ok_fwd = d_logits <= FWD_TOL and d_loss <= FWD_TOL
  print('same-math check Keras (%d variables loaded from ours, train-mode forward): loss '
        '(CE + model.losses) keras %.6f ours %.6f |diff| %.3g; logits max|diff| %.3g -> %s'
        % (len(pairs), loss, ref['loss'], d_loss, d_logits, 'OK' if ok_fwd else 'MISMATCH'))
  load()
  step_loss = float(model.train_on_batch(images_np, labels_np))
  d_state = d_grad = 0.0
  for var, name in pairs:
    value = keras.ops.convert_to_numpy(var)
    d_state = max(d_state, float(np.max(np.abs(value - ref['after'][name]))))
    if var.trainable:
      # Keras' first momentum buffer is -lr * g, ours (MomentumOptimizer's slot) is g.
      grad = -keras.ops.convert_to_numpy(keras_resnet.momentum_slot(model, var)) / ref['lr']
      d_grad = max(d_grad, max_rel_diff(grad, ref['after'][name + '/Momentum']))
  ok_step = (d_state <= STATE_TOL and d_grad <= GRAD_REL_TOL
             and abs(step_loss - float(ref['loss'])) <= FWD_TOL)
  print('same-math check Keras (one train_on_batch step, loss %.6f): weights + BN moving '
        'averages max|diff| vs ours %.3g (tol 1e-3); gradients (-momentum / lr) max relative '
        'diff %.3g (tol 5e-2) -> %s'
        % (step_loss, d_state, d_grad, 'OK' if ok_step else 'MISMATCH'))
  return ok_fwd and ok_step


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--steps', type=int, default=3, help='timed steps per block')
  parser.add_argument('--blocks', type=int, default=15,
                      help='timed blocks per model, alternating ours / original (and timed '
                      'Keras epochs, one before each block pair)')
  parser.add_argument('--warmup', type=int, default=3, help='untimed steps per model')
  parser.add_argument('--num_residual_units', type=int, default=5)
  parser.add_argument('--profile', type=int, default=0,
                      help='after timing, trace this many steps of each graph and print the '
                      'per-op-type breakdown')
  parser.add_argument('--dataset', default='mnist', choices=sorted(dataset_input.DATASETS))
  parser.add_argument('--keras_steps_per_epoch', type=int, default=0,
                      help='steps per timed Keras fit epoch (default: --steps)')
  parser.add_argument('--no_keras', action='store_true', help='skip the Keras model.fit peer')
  parser.add_argument('--sgemm_n', type=int, default=2048, help='SGEMM size n (n x n x n)')
  parser.add_argument('--sgemm_runs', type=int, default=5, help='numpy SGEMM runs')
  args = parser.parse_args()
  keras_steps = args.keras_steps_per_epoch or args.steps
  use_keras = not args.no_keras

  spec = dataset_input.get_spec(args.dataset)
  shape = dataset_input.image_shape(spec)
  hps = resnet_model.default_hparams(batch_size=args.batch_size,
                                     num_residual_units=args.num_residual_units)
  params, flops = resnet_model.count_params_and_flops(hps, shape)

  rng = np.random.RandomState(0)
  images_np = rng.uniform(-0.5, 0.5, (args.batch_size,) + shape).astype(np.float32)
  labels_np = np.eye(10, dtype=np.float32)[rng.randint(0, 10, args.batch_size)]

  ours = build_ours(hps, spec, images_np, labels_np)
  orig = build_original(hps, images_np, labels_np)
  config = ours['config']  # the same ConfigProto (default thread pools) for both sessions
  sess_ours = tf1.Session(graph=ours['graph'], config=config)
  sess_orig = tf1.Session(graph=orig['graph'], config=config)
  sess_ours.run(ours['init'])
  sess_orig.run(orig['init'])
  n_copied = copy_weights(sess_ours, ours, sess_orig, orig)

  print('ResNet-%d on %s-shaped input [%d,%s], %d trainable parameters'
        % (6 * args.num_residual_units + 2, args.dataset, args.batch_size,
           ','.join(map(str, shape)), params))
  print('forward FLOPs per image (resnet_model.count_params_and_flops): %d (%.2f MFLOP), of '
        'which convolutions %.2f MFLOP'
        % (flops, flops / 1e6, conv_forward_flops(hps, shape) / 1e6))
  print('TensorFlow %s, %d CPU cores visible, default intra/inter-op threads (eager: intra %d, '
        'inter %d; 0 = default)' % (tf.__version__, os.cpu_count(),
                                     tf.config.threading.get_intra_op_parallelism_threads(),
                                     tf.config.threading.get_inter_op_parallelism_threads()))

  # Same math: identical weights, same batch, train-mode forward pass.
  names = [v.op.name for v in model_vars(ours['variables'])]
  before_a = dict(zip(names, sess_ours.run(model_vars(ours['variables']))))
  loss_a, logits_a = sess_ours.run([ours['loss'], ours['logits']])
  loss_b, logits_b = sess_orig.run([orig['loss'], orig['logits']])
  d_logits = float(np.max(np.abs(logits_a - logits_b)))
  d_loss = abs(float(loss_a) - float(loss_b))
  ok_fwd = d_logits <= FWD_TOL and d_loss <= FWD_TOL
  print('same-math check (%d variables copied, train-mode forward, same batch): '
        'loss ours %.6f original %.6f |diff| %.3g; logits max|diff| %.3g -> %s'
        % (n_copied, loss_a, loss_b, d_loss, d_logits, 'OK' if ok_fwd else 'MISMATCH'))
  # And one full training step from the same state: every variable after it. The momentum
  # slots hold the first gradients, compared relative to each slot's largest entry: in float32
  # the gradients of this deep random-init net are ill-conditioned (against a float64 copy of
  # the original graph: up to ~1e-2 relative error for the original itself, ~3e-2 for ours),
  # so they get a looser tolerance than the forward pass.
  sess_ours.run(ours['train_op'])
  sess_orig.run(orig['train_op'])
  after_a = sess_ours.run(model_vars(ours['variables']))
  after_b = sess_orig.run(model_vars(orig['variables']))
  d_state = d_grad = 0.0
  for name, a, b in zip(names, after_a, after_b):
    if name.endswith('/Momentum'):
      d_grad = max(d_grad, max_rel_diff(a, b))
    else:
      d_state = max(d_state, float(np.max(np.abs(a - b))))
  ok_step = d_state <= STATE_TOL and d_grad <= GRAD_REL_TOL
  print('same-math check (one training step): weights + BN moving averages max|diff| %.3g '
        '(tol 1e-3); gradients (momentum slots) max relative diff %.3g (tol 5e-2) -> %s'
        % (d_state, d_grad, 'OK' if ok_step else 'MISMATCH'))

  ok_keras = True
  if use_keras:
    import keras  # pylint: disable=g-import-not-at-top
    assert tf.executing_eagerly(), 'the Keras peer needs eager execution in this process'
    model, pairs = keras_resnet.build(args.num_residual_units, shape, hps.num_classes,
                                      hps.relu_leakiness, hps.weight_decay_rate)
    keras_resnet.compile_for_training(model, hps.lrn_rate)
    k_trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    k_other = int(sum(np.prod(w.shape) for w in model.non_trainable_weights))
    our_other = int(sum(np.prod(v.shape) for v in model_vars(ours['variables'])
                        if not v.trainable and not v.op.name.endswith('/Momentum')))
    ok_params = k_trainable == params and k_other == our_other
    print('Keras %s (backend %s) functional ResNet-%d: trainable parameters %d (ours %d), '
          'non-trainable (BN moving averages) %d (ours %d) -> %s; jit_compile=%s, '
          'steps_per_execution=%d'
          % (keras.__version__, keras.backend.backend(), 6 * args.num_residual_units + 2,
             k_trainable, params, k_other, our_other, 'match' if ok_params else 'MISMATCH',
             model.jit_compile, model.steps_per_execution))
    ok_keras = ok_params and keras_same_math(
        model, pairs, before_a, images_np, labels_np,
        dict(loss=float(loss_a), logits=logits_a, after=dict(zip(names, after_a)),
             lr=hps.lrn_rate))
    dataset = tf.data.Dataset.from_tensors((images_np, labels_np)).repeat()

  sgemm_sess, sgemm_op = build_sgemm(config, args.sgemm_n)
  load_before = os.getloadavg()[0]
  rates = {'ours': [], 'original': [], 'keras': []}
  cpu_rates = {'ours': [], 'original': [], 'keras': []}
  sgemm_rates = []

  def warmup():
    for _ in range(args.warmup):
      sess_ours.run(ours['train_op'])
      sess_orig.run(orig['train_op'])
    time_sgemm(sgemm_sess, sgemm_op, args.sgemm_n)

  def run_block(block):
    order = [('ours', sess_ours, ours), ('original', sess_orig, orig)]
    if block % 2:
      order.reverse()
    for name, sess, model_ in order:
      wall, cpu = time_block(sess, model_['train_op'], args.steps)
      rates[name].append(args.steps * args.batch_size / wall)
      cpu_rates[name].append(args.steps * args.batch_size / max(cpu, 1e-9))
    sgemm_rates.append(time_sgemm(sgemm_sess, sgemm_op, args.sgemm_n))

  keras_first_epoch = None
  if use_keras:

    class Interleave(keras.callbacks.Callback):
      """Times each fit epoch; after it, runs one block of ours / original (warm-up after 0)."""

      def on_epoch_begin(self, epoch, logs=None):
        self.start = (time.perf_counter(), time.process_time())

      def on_epoch_end(self, epoch, logs=None):
        wall = time.perf_counter() - self.start[0]
        cpu = time.process_time() - self.start[1]
        n = keras_steps * args.batch_size
        if epoch == 0:
          self.first = wall
          warmup()
        else:
          rates['keras'].append(n / wall)
          cpu_rates['keras'].append(n / max(cpu, 1e-9))
          run_block(epoch - 1)

    callback = Interleave()
    model.fit(dataset, epochs=args.blocks + 1, steps_per_epoch=keras_steps, verbose=0,
              shuffle=False, callbacks=[callback])
    keras_first_epoch = callback.first
  else:
    warmup()
    for block in range(args.blocks):
      run_block(block)
  load_after = os.getloadavg()[0]
  np_sgemm, blas = numpy_sgemm(args.sgemm_n, args.sgemm_runs)

  train_flops = 3 * flops  # a training step counted as 3x the forward FLOPs per image
  print('timing: %d warmup steps each, then %d alternating blocks x %d steps per graph '
        '(batch %d)%s; GFLOP/s counts a training step as 3x the forward FLOPs per image '
        '(%.2f MFLOP/image); 1-min load average %.1f before, %.1f after'
        % (args.warmup, args.blocks, args.steps, args.batch_size,
           (', each pair preceded by one timed Keras fit epoch of %d steps (epoch 0, %.1f s with '
            'tracing, not counted)' % (keras_steps, keras_first_epoch)) if use_keras else '',
           train_flops / 1e6, load_before, load_after))
  print('%-9s %10s %9s %13s   %s' % ('model', 'images/s', 'GFLOP/s', 'images/CPU-s',
                                     'per-block images/s (wall)'))
  med, med_cpu = {}, {}
  for name in ('ours', 'original', 'keras') if use_keras else ('ours', 'original'):
    med[name] = statistics.median(rates[name])
    med_cpu[name] = statistics.median(cpu_rates[name])
    print('%-9s %10.1f %9.2f %13.1f   %s' % (name, med[name], med[name] * train_flops / 1e9,
                                            med_cpu[name],
                                            ' '.join('%.0f' % r for r in rates[name])))
  sgemm = statistics.median(r for r, _ in sgemm_rates)
  sgemm_best = max(r for r, _ in sgemm_rates)
  sgemm_cpu = statistics.median(c for _, c in sgemm_rates)
  print('SGEMM %dx%d @ %dx%d float32, TF Session (our config), one run per block: median %.1f '
        'GFLOP/s, best %.1f, per CPU-second of this process %.1f (per run: %s); numpy (%s) '
        'median %.1f GFLOP/s over %d runs after the blocks'
        % (args.sgemm_n, args.sgemm_n, args.sgemm_n, args.sgemm_n, sgemm, sgemm_best, sgemm_cpu,
           ' '.join('%.0f' % r for r, _ in sgemm_rates), blas, np_sgemm, args.sgemm_runs))
  ratio = med['ours'] / med['original']
  print('ratio ours/original (median wall images/s): %.3fx (target >= 1.5x: %s); '
        'per CPU-second of this process: %.3fx'
        % (ratio, 'met' if ratio >= 1.5 else 'NOT met', med_cpu['ours'] / med_cpu['original']))
  profile_totals = None
  if args.profile:
    profile_totals = profile([('ours', ours), ('original', orig)], config, args.profile)
  sess_ours.close()
  sess_orig.close()
  sgemm_sess.close()

  ours_gflops = med['ours'] * train_flops / 1e9
  fraction = ours_gflops / sgemm
  print()
  print('=' * 30 + ' summary ' + '=' * 30)
  print('ours          %8.1f images/s  %6.2f GFLOP/s' % (med['ours'], ours_gflops))
  print('original way  %8.1f images/s  %6.2f GFLOP/s'
        % (med['original'], med['original'] * train_flops / 1e9))
  if use_keras:
    print('Keras fit     %8.1f images/s  %6.2f GFLOP/s'
          % (med['keras'], med['keras'] * train_flops / 1e9))
  print('ours/original %8.3fx  (target >= 1.5x: %s)' % (ratio, 'met' if ratio >= 1.5 else
                                                         'NOT met, short by %.1f%%'
                                                         % (100 * (1 - ratio / 1.5))))
  if use_keras:
    ratio_k = med['ours'] / med['keras']
    print('ours/Keras    %8.3fx  (target >= 1.5x: %s); per CPU-second %.3fx'
          % (ratio_k, 'met' if ratio_k >= 1.5 else
             'NOT met, short by %.1f%%' % (100 * (1 - ratio_k / 1.5)),
             med_cpu['ours'] / med_cpu['keras']))
  print('SGEMM         %8.1f GFLOP/s median (TF, our session config; best %.1f; per CPU-second '
        '%.1f; numpy %.1f)' % (sgemm, sgemm_best, sgemm_cpu, np_sgemm))

  def verdict(frac, ref):
    return ('met' if frac >= 0.55 else 'NOT met: ours would need %.1f GFLOP/s = %.0f images/s, '
            '%.2fx what it does' % (0.55 * ref, 0.55 * ref * 1e9 / train_flops, 0.55 / frac))

  print('ours/SGEMM    %8.1f%%  of the median (target >= 55%%: %s)'
        % (100 * fraction, verdict(fraction, sgemm)))
  print('              %8.1f%%  of the best SGEMM run (%s); per CPU-second %.1f%% '
        '(%.1f of %.1f GFLOP/CPU-s)'
        % (100 * ours_gflops / sgemm_best, verdict(ours_gflops / sgemm_best, sgemm_best),
           100 * med_cpu['ours'] * train_flops / 1e9 / sgemm_cpu,
           med_cpu['ours'] * train_flops / 1e9, sgemm_cpu))
  if profile_totals:
    total_ms, conv_ms = profile_totals['ours']
    conv_gflops = 3 * conv_forward_flops(hps, shape) * args.batch_size / (conv_ms / 1e3) / 1e9
    print('profile (ours, ops serialized): convolutions %.0f of %.0f ms per step (%.0f%%) at '
          '~%.1f GFLOP/s (3x forward conv FLOPs) = %.0f%% of the SGEMM median; all ops '
          'together %.1f GFLOP/s = %.0f%% of SGEMM'
          % (conv_ms, total_ms, 100 * conv_ms / total_ms, conv_gflops, 100 * conv_gflops / sgemm,
             train_flops * args.batch_size / (total_ms / 1e3) / 1e9,
             100 * train_flops * args.batch_size / (total_ms / 1e3) / 1e9 / sgemm))
  ok = ok_fwd and ok_step and ok_keras
  print('same-math checks: %s' % ('all OK' if ok else 'FAILED'))
  return 0 if ok else 1


if __name__ == '__main__':
  sys.exit(main())
