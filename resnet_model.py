"""Pre-activation ResNet (tensorflow/models research/resnet) with CE and RCE losses.

Reverse Cross-Entropy (RCE) and the test-time flip come from Pang et al., "Towards Robust
Detection of Adversarial Examples", NeurIPS 2018 (https://arxiv.org/abs/1706.00633).

Variable names are the original ones (`init/init_conv/DW`, `unit_1_0/...`, `unit_last/final_bn`,
`logit/DW`, `logit/biases`, BN `beta`/`gamma`/`moving_mean`/`moving_variance`), so checkpoints
keep their layout. Every model input is NHWC float32 in [-0.5, 0.5]; the batch size is dynamic.
Variables are created with AUTO_REUSE: calling the builder again (towers, attacks, eval
copies) shares them.
"""
import collections

import numpy as np
import tensorflow as tf

tf1 = tf.compat.v1

HParams = collections.namedtuple('HParams', [
    'num_classes', 'lrn_rate', 'num_residual_units', 'use_bottleneck', 'weight_decay_rate',
    'relu_leakiness', 'optimizer', 'RCE_train'])


def default_hparams(**overrides):
  """The paper's hyper-parameters (ResNet-32, momentum, CE); keyword arguments override."""
  hps = HParams(num_classes=10, lrn_rate=0.1, num_residual_units=5, use_bottleneck=False,
                weight_decay_rate=0.0002, relu_leakiness=0.1, optimizer='mom', RCE_train=False)
  return hps._replace(**overrides)


BN_EPSILON = 0.001
BN_DECAY = 0.9
STAGE_STRIDES = (1, 2, 2)
FEATURE_DIM = 64  # width of the last stage = the feature K-density and t-SNE use
_VARIABLE_NAMES = ('DW', 'biases', 'beta', 'gamma', 'moving_mean', 'moving_variance')


def flip_logits(logits, rce):
  """The RCE flip, decided here and nowhere else: an RCE model predicts with -logits.

  Args:
    logits: [B, K] raw logits Z of the network (tensor or numpy array).
    rce: whether the model was trained with RCE.

  Returns:
    The logits every consumer of predictions uses: -Z for RCE, Z for CE.
  """
  return -logits if rce else logits


def ce_loss(logits, labels):
  """Mean softmax cross-entropy with one-hot `labels` [B, K]."""
  return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits))


def reverse_labels(labels):
  """R_y = (1 - onehot(y)) / (K - 1) for one-hot `labels` [B, K]."""
  k = tf.cast(tf.shape(labels)[-1], labels.dtype)
  return (1.0 - labels) / (k - 1.0)


def rce_loss(logits, labels):
  """Mean reverse cross-entropy -sum_j R_y[j] log softmax(Z)_j, via log_softmax (no -inf)."""
  return tf.reduce_mean(-tf.reduce_sum(reverse_labels(labels) * tf.nn.log_softmax(logits),
                                       axis=-1))


def classification_loss(logits, labels, rce):
  """CE or RCE on the raw logits."""
  return rce_loss(logits, labels) if rce else ce_loss(logits, labels)


def weight_decay(hps, variables=None):
  """weight_decay_rate * sum of l2_loss over the conv and FC weights (variables named DW)."""
  variables = tf1.trainable_variables() if variables is None else variables
  weights = [v for v in variables if v.op.name.endswith('DW')]
  return hps.weight_decay_rate * tf.add_n([tf.nn.l2_loss(w) for w in weights])


class _Builder(object):
  """Builds one copy of the network; collects the BN moving-average updates of train mode."""

  def __init__(self, hps, mode, compute_dtype=tf.float32):
    if mode not in ('train', 'eval'):
      raise ValueError('mode must be train or eval, got %r' % mode)
    self.hps = hps
    self.training = mode == 'train'
    self.dtype = tf.as_dtype(compute_dtype)
    self.update_ops = []

  def cast(self, value):
    """`value` (a float32 variable or tensor) in the compute dtype; a no-op in float32."""
    return value if value.dtype.base_dtype == self.dtype else tf.cast(value, self.dtype)

  def conv_kernel(self, name, in_filters, size, out_filters):
    with tf1.variable_scope(name):
      n = size * size * out_filters  # He-normal over fan-out, as the original
      return tf1.get_variable(
          'DW', [size, size, in_filters, out_filters], tf.float32,
          initializer=tf1.random_normal_initializer(stddev=np.sqrt(2.0 / n)))

  def conv(self, name, x, size, out_filters, stride):
    kernel = self.conv_kernel(name, x.shape[-1], size, out_filters)
    return tf.nn.conv2d(x, self.cast(kernel), [1, stride, stride, 1], padding='SAME')

  def bn_variables(self, channels):
    """(beta, gamma, moving_mean, moving_variance) of the BN layer of the current scope."""
    shape = [channels]
    beta = tf1.get_variable('beta', shape, tf.float32, tf1.zeros_initializer())
    gamma = tf1.get_variable('gamma', shape, tf.float32, tf1.ones_initializer())
    moving_mean = tf1.get_variable('moving_mean', shape, tf.float32, tf1.zeros_initializer(),
                                   trainable=False)
    moving_var = tf1.get_variable('moving_variance', shape, tf.float32, tf1.ones_initializer(),
                                  trainable=False)
    return beta, gamma, moving_mean, moving_var

  def batch_norm(self, name, x):
    """Fused BN: batch statistics (moving averages updated) in train, moving ones in eval.

    Its parameters and statistics stay float32 in mixed precision (the fused kernel takes a
    float16 or bfloat16 `x` with float32 scale and offset and returns float32 statistics).
    """
    with tf1.variable_scope(name):
      beta, gamma, moving_mean, moving_var = self.bn_variables(x.shape[-1])
      if not self.training:
        return tf.nn.batch_normalization(x, *[self.cast(v) for v in (
            moving_mean, moving_var, beta, gamma)], variance_epsilon=BN_EPSILON)
      y, mean, var = tf1.nn.fused_batch_norm(x, gamma, beta, epsilon=BN_EPSILON,
                                             is_training=True)
      # The fused kernel returns the Bessel-corrected variance; the original (tf.nn.moments)
      # averaged the biased one.
      n = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)
      var = var * (n - 1.0) / tf.maximum(n, 2.0)
      self.update_ops.append(tf1.assign_sub(moving_mean, (1 - BN_DECAY) * (moving_mean - mean)))
      self.update_ops.append(tf1.assign_sub(moving_var, (1 - BN_DECAY) * (moving_var - var)))
      return y

  def conv_bn(self, x, kernel, stride, bn_name):
    """batch_norm(bn_name, conv2d(x, kernel)): a unit's conv directly followed by its BN.

    In eval mode that BN is a fixed affine map per output channel, s * z + (beta - s * mean)
    with s = gamma / sqrt(moving_variance + eps), so it is folded into the conv: one fused
    conv + bias op with kernel * s instead of a conv and two elementwise passes. Same function
    up to float rounding; about 5 % off every attack, evaluation and feature pass.
    """
    strides = [1, stride, stride, 1]
    if self.training:
      return self.batch_norm(bn_name, tf.nn.conv2d(x, self.cast(kernel), strides,
                                                   padding='SAME'))
    with tf1.variable_scope(bn_name):
      beta, gamma, moving_mean, moving_var = self.bn_variables(kernel.shape[-1])
      scale = gamma * tf.math.rsqrt(moving_var + BN_EPSILON)
      return tf.nn.bias_add(tf.nn.conv2d(x, self.cast(kernel * scale), strides, padding='SAME'),
                            self.cast(beta - moving_mean * scale))

  def relu(self, x):
    return tf.nn.leaky_relu(x, alpha=self.hps.relu_leakiness)

  def residual(self, x, out_filters, stride, activate_before_residual):
    in_filters = x.shape[-1]
    if activate_before_residual:
      with tf1.variable_scope('shared_activation'):
        x = self.relu(self.batch_norm('init_bn', x))
        orig_x = x
    else:
      with tf1.variable_scope('residual_only_activation'):
        orig_x = x
        x = self.relu(self.batch_norm('init_bn', x))
    with tf1.variable_scope('sub1'):
      kernel = self.conv_kernel('conv1', in_filters, 3, out_filters)
    with tf1.variable_scope('sub2'):
      x = self.relu(self.conv_bn(x, kernel, stride, 'bn2'))
      x = self.conv('conv2', x, 3, out_filters, 1)
    with tf1.variable_scope('sub_add'):
      if in_filters != out_filters:
        orig_x = tf.nn.avg_pool2d(orig_x, stride, stride, 'VALID')
        pad = (out_filters - in_filters) // 2
        orig_x = tf.pad(orig_x, [[0, 0], [0, 0], [0, 0], [pad, pad]])
      return x + orig_x

  def bottleneck(self, x, out_filters, stride, activate_before_residual):
    in_filters = x.shape[-1]
    if activate_before_residual:
      with tf1.variable_scope('common_bn_relu'):
        x = self.relu(self.batch_norm('init_bn', x))
        orig_x = x
    else:
      with tf1.variable_scope('residual_bn_relu'):
        orig_x = x
        x = self.relu(self.batch_norm('init_bn', x))
    with tf1.variable_scope('sub1'):
      kernel = self.conv_kernel('conv1', in_filters, 1, out_filters // 4)
    with tf1.variable_scope('sub2'):
      x = self.relu(self.conv_bn(x, kernel, stride, 'bn2'))
      kernel = self.conv_kernel('conv2', out_filters // 4, 3, out_filters // 4)
    with tf1.variable_scope('sub3'):
      x = self.relu(self.conv_bn(x, kernel, 1, 'bn3'))
      x = self.conv('conv3', x, 1, out_filters, 1)
    with tf1.variable_scope('sub_add'):
      if in_filters != out_filters:
        orig_x = self.conv('project', orig_x, 1, out_filters, stride)
      return x + orig_x

  def fully_connected(self, x, out_dim):
    w = tf1.get_variable('DW', [x.shape[-1], out_dim], tf.float32,
                         initializer=tf1.variance_scaling_initializer(1.0, 'fan_in', 'uniform'))
    b = tf1.get_variable('biases', [out_dim], tf.float32, tf1.zeros_initializer())
    return tf.compat.v1.nn.xw_plus_b(x, self.cast(w), self.cast(b))

  def network(self, images):
    """(logits, feature, layers): `layers` maps LAYER_NAMES to the input, each stage's
    output and the feature, for detectors that look at every block."""
    hps = self.hps
    layers = collections.OrderedDict(input=images)
    if hps.use_bottleneck:
      unit, filters = self.bottleneck, (64, 128, 256)
    else:
      unit, filters = self.residual, (16, 32, FEATURE_DIM)
    with tf1.variable_scope('init'):
      x = self.conv('init_conv', self.cast(images), 3, 16, 1)
    for stage, (out_filters, stride) in enumerate(zip(filters, STAGE_STRIDES), start=1):
      for i in range(hps.num_residual_units):
        with tf1.variable_scope('unit_%d_%d' % (stage, i)):
          x = unit(x, out_filters, stride if i == 0 else 1,
                   activate_before_residual=(stage == 1 and i == 0))
      layers['stage_%d' % stage] = x
    with tf1.variable_scope('unit_last'):
      x = self.relu(self.batch_norm('final_bn', x))
      feature = tf.reduce_mean(x, [1, 2], name='feature')
    with tf1.variable_scope('logit'):
      logits = self.fully_connected(feature, hps.num_classes)
    # The loss, the predictions and the detectors' inputs are float32 in every precision.
    layers['feature'] = feature
    return (tf.cast(logits, tf.float32), tf.cast(feature, tf.float32),
            collections.OrderedDict((k, tf.cast(v, tf.float32)) for k, v in layers.items()))


Network = collections.namedtuple('Network', ['logits', 'raw_logits', 'feature', 'update_ops',
                                             'layers'])
# The layer outputs a Network exposes, input first, the 64-d feature last.
LAYER_NAMES = ('input', 'stage_1', 'stage_2', 'stage_3', 'feature')


def build_network(hps, images, mode, compute_dtype=tf.float32):
  """Builds (or reuses) the ResNet on `images`.

  Args:
    hps: HParams (`RCE_train` decides the prediction logits, `num_classes` their width).
    images: [B, H, W, C] float32 in [-0.5, 0.5]; C is taken from the input.
    mode: 'train' (batch statistics, BN updates returned) or 'eval' (moving statistics).
    compute_dtype: float32 (default), or float16 / bfloat16 for mixed-precision training:
      the variables stay float32 (same names, same checkpoints) and are cast on use; the
      logits and the feature come back float32.

  Returns:
    Network:
      logits: [B, num_classes] the logits every consumer of predictions uses (accuracy,
        attacks, confidence, detection): the RCE flip is applied here, once.
      raw_logits: [B, num_classes] the network's output Z, for the CE / RCE loss.
      feature: [B, 64] output of the global average pool (the detector's feature).
      update_ops: BN moving-average updates (empty in eval mode).
      layers: OrderedDict of LAYER_NAMES: the input [B, H, W, C], the output of each of the
        three stages [B, h, w, c] (before the final BN and ReLU) and the feature [B, 64],
        float32; no extra variables, so checkpoints are unchanged.
  """
  builder = _Builder(hps, mode, compute_dtype)
  with tf1.variable_scope(tf1.get_variable_scope(), reuse=tf1.AUTO_REUSE):
    raw_logits, feature, layers = builder.network(images)
  return Network(flip_logits(raw_logits, hps.RCE_train), raw_logits, feature,
                 builder.update_ops, layers)


def is_model_variable_name(name):
  """Whether `name` is one of the network's variables (not an optimizer slot or attack state)."""
  return (name.startswith(('init/', 'unit_', 'logit/'))
          and name.rsplit('/', 1)[-1] in _VARIABLE_NAMES)


def model_variables():
  """The network's variables in the default graph (not optimizer slots, not attack state)."""
  return [v for v in tf1.global_variables() if is_model_variable_name(v.op.name)]


def make_model_fn(hps):
  """Returns model_fn(x) -> (prediction logits [B,K], feature [B,64]) in eval mode, shared vars.

  This is the function attacks, accuracy and detection take: its logits are the network's
  prediction logits, so none of them needs to know how the model was trained.
  """
  def model_fn(x):
    net = build_network(hps, x, 'eval')
    return net.logits, net.feature

  return model_fn


def make_layers_fn(hps):
  """Returns layers_fn(x) -> (prediction logits, feature, {LAYER_NAMES: output}) in eval mode,
  shared variables (make_model_fn's, with the layer outputs the supervised detectors read)."""
  def layers_fn(x):
    net = build_network(hps, x, 'eval')
    return net.logits, net.feature, net.layers

  return layers_fn


def make_logits_fn(hps):
  """Returns logits_fn(x) -> prediction logits [B, K] (see make_model_fn)."""
  model_fn = make_model_fn(hps)
  return lambda x: model_fn(x)[0]


def count_params_and_flops(hps, image_shape):
  """(trainable parameters, FLOPs per image) of the eval network, from tf.compat.v1.profiler."""
  graph = tf.Graph()
  with graph.as_default():
    images = tf1.placeholder(tf.float32, [1] + list(image_shape))
    build_network(hps, images, 'eval')
    builder = tf1.profiler.ProfileOptionBuilder
    flops = tf1.profiler.profile(
        graph, options=builder(builder.float_operation()).with_empty_output().build())
    params = int(sum(np.prod(v.shape) for v in tf1.trainable_variables()))
  return params, int(flops.total_float_ops)
