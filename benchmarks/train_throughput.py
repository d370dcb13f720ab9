"""Training throughput of ResNet-32: ours (training.py / resnet_model.py) vs the original graph.

One training step = forward + backward + momentum apply + BN moving-average updates, loss =
CE + weight decay 2e-4, on a fixed in-memory random batch. Ours, the original research/resnet
graph and Keras 3 `model.fit` (benchmarks/keras_resnet.py) are first checked to compute the
same thing (same weights: forward pass and one training step), then timed in interleaved
blocks beside a SGEMM of the machine; the medians of the blocks are reported. What is
compared and how: benchmarks/README.md.

  python -m benchmarks.train_throughput [--batch_size 128] [--steps 3] [--blocks 15] \
      [--warmup 3] [--num_residual_units 5] [--dataset mnist] [--profile N] \
      [--keras_steps_per_epoch N] [--no_keras] [--sgemm_n 2048] [--sgemm_runs 5]
"""
import argparse
import collections
import functools
import os
import statistics
import sys

import keras
import numpy as np
import tensorflow as tf

from benchmarks import keras_resnet  # builds nothing at import
from benchmarks import timing
import dataset_input
from rce import placement
from rce.training import training
import resnet_model

tf1 = tf.compat.v1

# Same-math tolerances: logits and loss (absolute), weights and BN moving averages after one
# step (absolute), first gradients (relative to each tensor's largest entry; see
# verify_original).
FWD_TOL, STATE_TOL, GRAD_REL_TOL = 1e-4, 1e-3, 5e-2
TARGET_RATIO = 1.5  # ours against the original graph and against Keras, images/s
TARGET_SGEMM_FRACTION = 0.55  # ours' training GFLOP/s against the SGEMM rate


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


TrainModel = collections.namedtuple('TrainModel', [
    'graph', 'train_op', 'loss', 'logits', 'init', 'variables'])


def build_graph(seed, images_np, labels_np, build_step):
  """A TrainModel in a graph of its own, trained on the batch held as graph constants.

  Args:
    seed: graph-level random seed (initial weights; they are overwritten by ours' anyway).
    images_np: float32 [B, H, W, C] in [-0.5, 0.5]; labels_np: float32 one-hot [B, K].
    build_step: (images, labels) -> (train_op, loss, logits), called inside the graph.
  """
  graph = tf.Graph()
  with graph.as_default():
    tf1.set_random_seed(seed)
    images, labels = tf.constant(images_np), tf.constant(labels_np)
    train_op, loss, logits = build_step(images, labels)
    return TrainModel(graph, train_op, loss, logits, tf1.global_variables_initializer(),
                      tf1.global_variables())


def build_ours(hps, spec, images_np, labels_np, devices):
  """Our training step (training.build_train_graph) on one tower."""
  def build_step(images, labels):
    tg = training.build_train_graph(hps, spec, images, labels, devices)
    # The network output Z (CE model: the prediction logits too), compared with the original.
    logits = [op.outputs[0] for op in tf1.get_default_graph().get_operations()
              if op.name.endswith('logit/xw_plus_b')]
    assert len(logits) == 1, [t.name for t in logits]
    return tg.train_op, tg.loss, logits[0]

  return build_graph(0, images_np, labels_np, build_step)


def build_original(hps, images_np, labels_np):
  """The original research/resnet training step (OriginalResNet)."""
  return build_graph(1, images_np, labels_np, OriginalResNet(hps).build)


def model_vars(variables):
  """Network variables plus momentum slots, in creation order (no step / lr bookkeeping)."""
  return [v for v in variables if v.op.name.startswith(('init/', 'unit_', 'logit/'))]


def copy_weights(src_sess, src, dst_sess, dst):
  """Copies the variables of TrainModel `src` into `dst`, matched by creation order."""
  src_vars, dst_vars = model_vars(src.variables), model_vars(dst.variables)
  assert len(src_vars) == len(dst_vars), (len(src_vars), len(dst_vars))
  values = src_sess.run(src_vars)
  with dst.graph.as_default():
    for sv, dv, value in zip(src_vars, dst_vars, values):
      assert sv.shape == dv.shape and sv.op.name == dv.op.name, (sv.op.name, dv.op.name)
      dv.load(value, dst_sess)
  return len(src_vars)


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


# ---------------------------------------------------------------------------- SGEMM
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


def sgemm_gflop(n):
  """GFLOP of one n x n x n matmul (2 n^3)."""
  return 2.0 * n ** 3 / 1e9


def numpy_sgemm(n, runs):
  """(median GFLOP/s of `runs` numpy float32 matmuls, BLAS name)."""
  rng = np.random.RandomState(0)
  a = rng.uniform(-1, 1, (n, n)).astype(np.float32)
  b = rng.uniform(-1, 1, (n, n)).astype(np.float32)
  out = np.empty((n, n), np.float32)
  matmul = lambda: np.matmul(a, b, out=out)
  timing.warm_up(matmul)  # BLAS threads start
  samples = timing.Samples()
  for _ in range(runs):
    samples.add(*timing.time_calls(matmul, 1))
  try:
    blas = np.__config__.CONFIG['Build Dependencies']['blas']['name']
  except Exception:  # pylint: disable=broad-except
    blas = 'unknown BLAS'
  return samples.median_rate(sgemm_gflop(n)), blas


# ---------------------------------------------------------------------------- build
def parse_args(argv=None):
  parser = argparse.ArgumentParser(prog='python -m benchmarks.train_throughput',
                                   description=__doc__.split('\n')[0])
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
  args = parser.parse_args(argv)
  args.keras_steps = args.keras_steps_per_epoch or args.steps
  args.use_keras = not args.no_keras
  return args


class Bench(object):
  """Everything `build` makes: the batch, ours and the original graph with their sessions
  (same weights), and the Keras model (`keras_model` None with --no_keras).

  Attributes:
    args: the parsed flags; hps, spec, shape: the model and data set.
    params, flops: trainable parameters and forward FLOPs per image of ours.
    images, labels: the batch, float32 [B, H, W, C] in [-0.5, 0.5] and one-hot [B, K].
    ours, orig: TrainModel; sess_ours, sess_orig: their sessions; config: their ConfigProto.
    copied: how many variables were copied from ours into the original.
    keras_model, keras_pairs: from keras_resnet.build (compiled).
  """

  def __init__(self, args):
    self.args = args
    self.spec = dataset_input.get_spec(args.dataset)
    self.shape = dataset_input.image_shape(self.spec)
    self.hps = resnet_model.default_hparams(num_residual_units=args.num_residual_units,
                                            num_classes=self.spec.num_classes)
    self.params, self.flops = resnet_model.count_params_and_flops(self.hps, self.shape)
    rng = np.random.RandomState(0)
    k = self.hps.num_classes
    self.images = rng.uniform(-0.5, 0.5, (args.batch_size,) + self.shape).astype(np.float32)
    self.labels = np.eye(k, dtype=np.float32)[rng.randint(0, k, args.batch_size)]
    devices, self.config = placement.tower_devices(0)
    self.ours = build_ours(self.hps, self.spec, self.images, self.labels, devices)
    self.orig = build_original(self.hps, self.images, self.labels)
    # The same ConfigProto (default thread pools) for both sessions.
    self.sess_ours = tf1.Session(graph=self.ours.graph, config=self.config)
    self.sess_orig = tf1.Session(graph=self.orig.graph, config=self.config)
    self.sess_ours.run(self.ours.init)
    self.sess_orig.run(self.orig.init)
    self.copied = copy_weights(self.sess_ours, self.ours, self.sess_orig, self.orig)
    self.keras_model = self.keras_pairs = None
    if args.use_keras:
      assert tf.executing_eagerly(), 'the Keras peer needs eager execution in this process'
      self.keras_model, self.keras_pairs = keras_resnet.build(
          args.num_residual_units, self.shape, self.hps.num_classes, self.hps.relu_leakiness,
          self.hps.weight_decay_rate)
      keras_resnet.compile_for_training(self.keras_model, self.hps.lrn_rate)

  @property
  def depth(self):
    return 6 * self.args.num_residual_units + 2

  @property
  def train_flops(self):
    """FLOPs of a training step per image, counted as 3x the forward FLOPs."""
    return 3 * self.flops

  def close(self):
    self.sess_ours.close()
    self.sess_orig.close()


def build(args):
  """Builds and prints the setup: ours and the original graph with ours' weights, Keras."""
  bench = Bench(args)
  shape = bench.shape
  print('ResNet-%d on %s-shaped input [%d,%s], %d trainable parameters'
        % (bench.depth, args.dataset, args.batch_size, ','.join(map(str, shape)),
           bench.params))
  print('forward FLOPs per image (resnet_model.count_params_and_flops): %d (%.2f MFLOP), of '
        'which convolutions %.2f MFLOP'
        % (bench.flops, bench.flops / 1e6, conv_forward_flops(bench.hps, shape) / 1e6))
  print('TensorFlow %s, %d CPU cores visible, default intra/inter-op threads (eager: intra %d, '
        'inter %d; 0 = default)' % (tf.__version__, os.cpu_count(),
                                     tf.config.threading.get_intra_op_parallelism_threads(),
                                     tf.config.threading.get_inter_op_parallelism_threads()))
  return bench


# ---------------------------------------------------------------------------- verify
def max_rel_diff(a, ref):
  """max |a - ref| relative to the largest |ref| entry."""
  return float(np.max(np.abs(a - ref)) / max(np.max(np.abs(ref)), 1e-12))


def _ok(flag):
  return 'OK' if flag else 'MISMATCH'


def verify_original(bench):
  """Same math of ours and the original: identical weights and batch, train-mode forward pass,
  then one full training step from the same state (every variable after it).

  The momentum slots hold the first gradients, compared relative to each slot's largest entry:
  in float32 the gradients of this deep random-init net are ill-conditioned (against a float64
  copy of the original graph: up to ~1e-2 relative error for the original itself, ~3e-2 for
  ours), so they get a looser tolerance than the forward pass.

  Returns:
    (ok, ref): ref holds ours' pre-step variable values 'before' and, for the Keras check,
    train-mode 'loss', 'logits', post-step values 'after' (momentum slots included) and 'lr'.
  """
  ours, orig, sess_ours, sess_orig = bench.ours, bench.orig, bench.sess_ours, bench.sess_orig
  names = [v.op.name for v in model_vars(ours.variables)]
  before = dict(zip(names, sess_ours.run(model_vars(ours.variables))))
  loss_a, logits_a = sess_ours.run([ours.loss, ours.logits])
  loss_b, logits_b = sess_orig.run([orig.loss, orig.logits])
  d_logits = float(np.max(np.abs(logits_a - logits_b)))
  d_loss = abs(float(loss_a) - float(loss_b))
  ok_fwd = d_logits <= FWD_TOL and d_loss <= FWD_TOL
  print('same-math check (%d variables copied, train-mode forward, same batch): '
        'loss ours %.6f original %.6f |diff| %.3g; logits max|diff| %.3g -> %s'
        % (bench.copied, loss_a, loss_b, d_loss, d_logits, _ok(ok_fwd)))
  sess_ours.run(ours.train_op)
  sess_orig.run(orig.train_op)
  after_a = sess_ours.run(model_vars(ours.variables))
  after_b = sess_orig.run(model_vars(orig.variables))
  d_state = d_grad = 0.0
  for name, a, b in zip(names, after_a, after_b):
    if name.endswith('/Momentum'):
      d_grad = max(d_grad, max_rel_diff(a, b))
    else:
      d_state = max(d_state, float(np.max(np.abs(a - b))))
  ok_step = d_state <= STATE_TOL and d_grad <= GRAD_REL_TOL
  print('same-math check (one training step): weights + BN moving averages max|diff| %.3g '
        '(tol 1e-3); gradients (momentum slots) max relative diff %.3g (tol 5e-2) -> %s'
        % (d_state, d_grad, _ok(ok_step)))
  ref = dict(before=before, loss=float(loss_a), logits=logits_a,
             after=dict(zip(names, after_a)), lr=bench.hps.lrn_rate)
  return ok_fwd and ok_step, ref


def verify_keras_params(bench):
  """Whether the Keras model has ours' trainable and non-trainable parameter counts."""
  model = bench.keras_model
  k_trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
  k_other = int(sum(np.prod(w.shape) for w in model.non_trainable_weights))
  our_other = int(sum(np.prod(v.shape) for v in model_vars(bench.ours.variables)
                      if not v.trainable and not v.op.name.endswith('/Momentum')))
  ok = k_trainable == bench.params and k_other == our_other
  print('Keras %s (backend %s) functional ResNet-%d: trainable parameters %d (ours %d), '
        'non-trainable (BN moving averages) %d (ours %d) -> %s; jit_compile=%s, '
        'steps_per_execution=%d'
        % (keras.__version__, keras.backend.backend(), bench.depth, k_trainable, bench.params,
           k_other, our_other, 'match' if ok else 'MISMATCH', model.jit_compile,
           model.steps_per_execution))
  return ok


def verify_keras(bench, ref):
  """Loads ours' pre-step weights into the Keras model; compares a train-mode forward pass
  and one `train_on_batch` step with ours (`ref` from verify_original). True when both pass.
  """
  model, pairs = bench.keras_model, bench.keras_pairs
  images_np, labels_np = bench.images, bench.labels

  def load():
    for var, name in pairs:
      var.assign(ref['before'][name])

  load()
  logits = model(images_np, training=True)  # (also moves the BN moving averages: reloaded below)
  ce = keras.losses.CategoricalCrossentropy(from_logits=True)(labels_np, logits)
  loss = float(ce) + float(sum(float(l) for l in model.losses))
  d_logits = float(np.max(np.abs(keras.ops.convert_to_numpy(logits) - ref['logits'])))
  d_loss = abs(loss - float(ref['loss']))
  ok_fwd = d_logits <= FWD_TOL and d_loss <= FWD_TOL
  print('same-math check Keras (%d variables loaded from ours, train-mode forward): loss '
        '(CE + model.losses) keras %.6f ours %.6f |diff| %.3g; logits max|diff| %.3g -> %s'
        % (len(pairs), loss, ref['loss'], d_loss, d_logits, _ok(ok_fwd)))
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
        'diff %.3g (tol 5e-2) -> %s' % (step_loss, d_state, d_grad, _ok(ok_step)))
  return ok_fwd and ok_step


def verify(bench):
  """Every same-math check (ours vs the original; Keras' parameters, forward and step)."""
  ok, ref = verify_original(bench)
  if bench.keras_model is not None:
    ok_keras = verify_keras_params(bench) and verify_keras(bench, ref)
    ok = ok and ok_keras
  return ok


# ---------------------------------------------------------------------------- time
Timings = collections.namedtuple('Timings', [
    'samples', 'load_before', 'load_after', 'keras_first_epoch', 'numpy_gflops', 'blas'])


class InterleavedFit(keras.callbacks.Callback):
  """Times every `model.fit` epoch; after epoch 0 (tracing, first runs: not counted) calls
  `warm_up()`, after each later epoch e `run_block(e - 1)`, so that the Keras epochs and the
  blocks of the graphs alternate."""

  def __init__(self, samples, warm_up, run_block):
    super(InterleavedFit, self).__init__()
    self.samples, self._warm_up, self._run_block = samples, warm_up, run_block
    self.first_epoch_s = None
    self._clock = None

  def on_epoch_begin(self, epoch, logs=None):
    self._clock = timing.Stopwatch()

  def on_epoch_end(self, epoch, logs=None):
    wall, cpu = self._clock.elapsed()
    if epoch == 0:
      self.first_epoch_s = wall
      self._warm_up()
    else:
      self.samples.add(wall, cpu)
      self._run_block(epoch - 1)


def time_models(bench):
  """Interleaved timing of ours, the original, Keras (if built) and the TF SGEMM.

  Every block times --steps training steps of ours and of the original (the order swapped
  every other block) and one SGEMM; with Keras, each block follows one timed fit epoch.
  """
  args = bench.args
  sgemm_sess, sgemm_op = build_sgemm(bench.config, args.sgemm_n)
  graphs = [('ours', bench.sess_ours, bench.ours), ('original', bench.sess_orig, bench.orig)]
  sgemm = functools.partial(sgemm_sess.run, sgemm_op)
  samples = {name: timing.Samples() for name in ('ours', 'original', 'keras', 'sgemm')}
  load_before = timing.load_average()

  def warm_up():
    timing.warm_up(lambda: [sess.run(model.train_op) for _, sess, model in graphs],
                   args.warmup)
    timing.warm_up(sgemm)

  def run_block(block):
    for name, sess, model in timing.rotated(graphs, block):
      samples[name].add(*timing.time_calls(functools.partial(sess.run, model.train_op),
                                           args.steps))
    samples['sgemm'].add(*timing.time_calls(sgemm, 1))

  keras_first_epoch = None
  if bench.keras_model is not None:
    dataset = tf.data.Dataset.from_tensors((bench.images, bench.labels)).repeat()
    callback = InterleavedFit(samples['keras'], warm_up, run_block)
    bench.keras_model.fit(dataset, epochs=args.blocks + 1, steps_per_epoch=args.keras_steps,
                          verbose=0, shuffle=False, callbacks=[callback])
    keras_first_epoch = callback.first_epoch_s
  else:
    warm_up()
    for block in range(args.blocks):
      run_block(block)
  load_after = timing.load_average()
  sgemm_sess.close()
  np_sgemm, blas = numpy_sgemm(args.sgemm_n, args.sgemm_runs)
  return Timings(samples, load_before, load_after, keras_first_epoch, np_sgemm, blas)


def profile(graphs, base_config, steps):
  """Per-op-type time of one training step (median over traced steps), ops serialized.

  Sessions with inter_op_parallelism_threads=1, so op times add up to the step instead of
  overlapping; each op still uses the default intra-op pool.

  Args:
    graphs: [('ours', TrainModel), ('original', TrainModel)].
    base_config: the ConfigProto of the timed sessions.
    steps: traced steps per graph.

  Returns:
    dict name -> (ms of all ops, ms of the convolution ops) per step.
  """
  config = tf1.ConfigProto()
  config.CopyFrom(base_config)
  config.inter_op_parallelism_threads = 1
  sessions = []
  for name, model in graphs:
    sess = tf1.Session(graph=model.graph, config=config)
    sess.run(model.init)
    sess.run(model.train_op)
    sessions.append((name, model, sess))
  per_op = {name: collections.defaultdict(list) for name, _ in graphs}
  counts = {}
  options = tf1.RunOptions(trace_level=tf1.RunOptions.FULL_TRACE)
  for _ in range(steps):
    for name, model, sess in sessions:
      metadata = tf1.RunMetadata()
      sess.run(model.train_op, options=options, run_metadata=metadata)
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
        % (t_orig / t_ours, t_orig / c_ours, t_orig / TARGET_RATIO - c_ours, t_ours - c_ours))
  return totals


# ---------------------------------------------------------------------------- report
def model_names(bench):
  return ('ours', 'original', 'keras') if bench.keras_model is not None else ('ours', 'original')


def images_per_run(bench, name):
  """Images in one timed run of `name`: a block of the graphs, a Keras epoch."""
  steps = bench.args.keras_steps if name == 'keras' else bench.args.steps
  return steps * bench.args.batch_size


def image_rate(bench, timings, name, cpu=False):
  """Median images/s (or images per CPU-second) of `name` over its timed runs."""
  return timings.samples[name].median_rate(images_per_run(bench, name), cpu)


def sgemm_rates(bench, timings):
  """(median, best, median per CPU-second) GFLOP/s of the TF SGEMM runs."""
  samples, gflop = timings.samples['sgemm'], sgemm_gflop(bench.args.sgemm_n)
  return (samples.median_rate(gflop), max(samples.rates(gflop)),
          samples.median_rate(gflop, cpu=True))


def report_timings(bench, timings):
  """The timing table (images/s, GFLOP/s, images/CPU-s per model), SGEMM and the ratio."""
  args, train_flops = bench.args, bench.train_flops
  keras_note = ''
  if bench.keras_model is not None:
    keras_note = (', each pair preceded by one timed Keras fit epoch of %d steps (epoch 0, '
                  '%.1f s with tracing, not counted)' % (args.keras_steps,
                                                         timings.keras_first_epoch))
  print('timing: %d warmup steps each, then %d alternating blocks x %d steps per graph '
        '(batch %d)%s; GFLOP/s counts a training step as 3x the forward FLOPs per image '
        '(%.2f MFLOP/image); 1-min load average %.1f before, %.1f after'
        % (args.warmup, args.blocks, args.steps, args.batch_size, keras_note,
           train_flops / 1e6, timings.load_before, timings.load_after))
  print('%-9s %10s %9s %13s   %s' % ('model', 'images/s', 'GFLOP/s', 'images/CPU-s',
                                     'per-block images/s (wall)'))
  for name in model_names(bench):
    rate = image_rate(bench, timings, name)
    per_block = timings.samples[name].rates(images_per_run(bench, name))
    print('%-9s %10.1f %9.2f %13.1f   %s' % (name, rate, rate * train_flops / 1e9,
                                            image_rate(bench, timings, name, cpu=True),
                                            ' '.join('%.0f' % r for r in per_block)))
  sgemm, sgemm_best, sgemm_cpu = sgemm_rates(bench, timings)
  n = args.sgemm_n
  print('SGEMM %dx%d @ %dx%d float32, TF Session (our config), one run per block: median %.1f '
        'GFLOP/s, best %.1f, per CPU-second of this process %.1f (per run: %s); numpy (%s) '
        'median %.1f GFLOP/s over %d runs after the blocks'
        % (n, n, n, n, sgemm, sgemm_best, sgemm_cpu,
           ' '.join('%.0f' % r for r in timings.samples['sgemm'].rates(sgemm_gflop(n))),
           timings.blas, timings.numpy_gflops, args.sgemm_runs))
  ratio = image_rate(bench, timings, 'ours') / image_rate(bench, timings, 'original')
  print('ratio ours/original (median wall images/s): %.3fx (target >= 1.5x: %s); '
        'per CPU-second of this process: %.3fx'
        % (ratio, 'met' if ratio >= TARGET_RATIO else 'NOT met',
           image_rate(bench, timings, 'ours', cpu=True)
           / image_rate(bench, timings, 'original', cpu=True)))


def _ratio_verdict(ratio):
  if ratio >= TARGET_RATIO:
    return 'met'
  return 'NOT met, short by %.1f%%' % (100 * (1 - ratio / TARGET_RATIO))


def _sgemm_verdict(fraction, ref, train_flops):
  if fraction >= TARGET_SGEMM_FRACTION:
    return 'met'
  need = TARGET_SGEMM_FRACTION * ref
  return ('NOT met: ours would need %.1f GFLOP/s = %.0f images/s, %.2fx what it does'
          % (need, need * 1e9 / train_flops, TARGET_SGEMM_FRACTION / fraction))


def report_summary(bench, timings, profile_totals=None):
  """The summary block: images/s and GFLOP/s of each model, the ratios against the targets,
  ours against the SGEMM and (with --profile) the convolutions' share."""
  args, train_flops = bench.args, bench.train_flops
  rate = {name: image_rate(bench, timings, name) for name in model_names(bench)}
  rate_cpu = {name: image_rate(bench, timings, name, cpu=True) for name in model_names(bench)}
  sgemm, sgemm_best, sgemm_cpu = sgemm_rates(bench, timings)
  ours_gflops = rate['ours'] * train_flops / 1e9
  fraction = ours_gflops / sgemm
  print()
  print('=' * 30 + ' summary ' + '=' * 30)
  print('ours          %8.1f images/s  %6.2f GFLOP/s' % (rate['ours'], ours_gflops))
  print('original way  %8.1f images/s  %6.2f GFLOP/s'
        % (rate['original'], rate['original'] * train_flops / 1e9))
  if 'keras' in rate:
    print('Keras fit     %8.1f images/s  %6.2f GFLOP/s'
          % (rate['keras'], rate['keras'] * train_flops / 1e9))
  print('ours/original %8.3fx  (target >= 1.5x: %s)'
        % (rate['ours'] / rate['original'], _ratio_verdict(rate['ours'] / rate['original'])))
  if 'keras' in rate:
    ratio_k = rate['ours'] / rate['keras']
    print('ours/Keras    %8.3fx  (target >= 1.5x: %s); per CPU-second %.3fx'
          % (ratio_k, _ratio_verdict(ratio_k), rate_cpu['ours'] / rate_cpu['keras']))
  print('SGEMM         %8.1f GFLOP/s median (TF, our session config; best %.1f; per CPU-second '
        '%.1f; numpy %.1f)' % (sgemm, sgemm_best, sgemm_cpu, timings.numpy_gflops))
  print('ours/SGEMM    %8.1f%%  of the median (target >= 55%%: %s)'
        % (100 * fraction, _sgemm_verdict(fraction, sgemm, train_flops)))
  print('              %8.1f%%  of the best SGEMM run (%s); per CPU-second %.1f%% '
        '(%.1f of %.1f GFLOP/CPU-s)'
        % (100 * ours_gflops / sgemm_best,
           _sgemm_verdict(ours_gflops / sgemm_best, sgemm_best, train_flops),
           100 * rate_cpu['ours'] * train_flops / 1e9 / sgemm_cpu,
           rate_cpu['ours'] * train_flops / 1e9, sgemm_cpu))
  if profile_totals:
    total_ms, conv_ms = profile_totals['ours']
    conv_gflops = (3 * conv_forward_flops(bench.hps, bench.shape) * args.batch_size
                   / (conv_ms / 1e3) / 1e9)
    all_gflops = train_flops * args.batch_size / (total_ms / 1e3) / 1e9
    print('profile (ours, ops serialized): convolutions %.0f of %.0f ms per step (%.0f%%) at '
          '~%.1f GFLOP/s (3x forward conv FLOPs) = %.0f%% of the SGEMM median; all ops '
          'together %.1f GFLOP/s = %.0f%% of SGEMM'
          % (conv_ms, total_ms, 100 * conv_ms / total_ms, conv_gflops, 100 * conv_gflops / sgemm,
             all_gflops, 100 * all_gflops / sgemm))


def main(argv=None):
  args = parse_args(argv)
  bench = build(args)
  try:
    ok = verify(bench)
    timings = time_models(bench)
    report_timings(bench, timings)
    profile_totals = None
    if args.profile:
      profile_totals = profile([('ours', bench.ours), ('original', bench.orig)], bench.config,
                               args.profile)
  finally:
    bench.close()
  report_summary(bench, timings, profile_totals)
  print('same-math checks: %s' % ('all OK' if ok else 'FAILED'))
  return 0 if ok else 1


if __name__ == '__main__':
  sys.exit(main())
