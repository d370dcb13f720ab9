"""An eager (TF2) copy of resnet_model's eval-mode network, loaded from a checkpoint.

The peer libraries (ART, foolbox 3, cleverhans 4) need a model they can call eagerly on a
tf.Tensor and differentiate with tf.GradientTape. `EagerResNet` is that model: the same
pre-activation ResNet as `resnet_model.build_network(hps, x, 'eval')` (conv2d SAME with the
same strides, tf.nn.batch_normalization with the moving statistics and epsilon 0.001, leaky
ReLU 0.1, average-pool + zero-channel-pad shortcuts, global average pool, xw_plus_b), with its
weights read by name from a checkpoint via tf.train.load_checkpoint. It is written the way a
TF2 / Keras user writes it, every BN its own op; ours folds each unit's second BN into the
conv before it (resnet_model's conv_bn), the same function up to float rounding. Its output is
the prediction logits, like `make_logits_fn`'s: the network output Z passed once through
`resnet_model.flip_logits(Z, hps.RCE_train)`, the model's own decision (-Z for RCE).

The forward pass is one tf.function with a dynamic-batch input signature, so it is traced
once: every library then gets the same compiled graph (and its gradient), and no library pays
per-op eager dispatch for the network itself.

    model = EagerResNet.from_checkpoint(path, hps, image_shape=(28, 28, 1))
    logits = model(x)                      # x: [B, 28, 28, 1] float32 in [-0.5, 0.5]
    logits = model(x, training=False)      # the Keras-style keyword ART passes
"""
import numpy as np
import tensorflow as tf

import resnet_model


class EagerResNet(tf.Module):
  """Eval-mode ResNet returning prediction logits, as a callable tf.Module."""

  def __init__(self, weights, hps, image_shape, name='eager_resnet'):
    """Holds `weights` as variables; the forward pass is traced on the first call.

    Args:
      weights: dict checkpoint name (e.g. 'unit_1_0/sub1/conv1/DW') -> numpy array.
      hps: resnet_model.HParams (num_residual_units, use_bottleneck, relu_leakiness,
        num_classes, RCE_train are used).
      image_shape: (H, W, C) of the inputs.
    """
    super(EagerResNet, self).__init__(name=name)
    if hps.use_bottleneck:
      raise NotImplementedError('EagerResNet covers the plain residual units only')
    self.hps = hps
    self.image_shape = tuple(int(d) for d in image_shape)
    self._names = sorted(weights)
    # Non-trainable variables (read-only in the attacks); a dict keyed by checkpoint name.
    self._vars = {n: tf.Variable(np.asarray(weights[n], np.float32), trainable=False,
                                 name=n.replace('/', '__')) for n in self._names}
    self._fn = tf.function(
        self._forward,
        input_signature=[tf.TensorSpec([None] + list(self.image_shape), tf.float32)])
    self.trace_count = 0

  @classmethod
  def from_checkpoint(cls, path, hps, image_shape):
    """Reads every network variable of `path` (a checkpoint prefix) by its name."""
    reader = tf.train.load_checkpoint(path)
    shapes = reader.get_variable_to_shape_map()
    weights = {}
    for name in shapes:
      if resnet_model.is_model_variable_name(name):
        weights[name] = reader.get_tensor(name)
    model = cls(weights, hps, image_shape)
    model._check_complete()
    return model

  def _check_complete(self):
    """Raises ValueError unless the checkpoint has every variable of this network's depth."""
    expected = {'init/init_conv/DW', 'unit_last/final_bn/beta', 'logit/DW', 'logit/biases'}
    for stage in (1, 2, 3):
      for i in range(self.hps.num_residual_units):
        expected.add('unit_%d_%d/sub1/conv1/DW' % (stage, i))
    missing = sorted(expected - set(self._names))
    if missing:
      raise ValueError('checkpoint lacks %s (wrong --num_residual_units?)' % missing[:3])
    deeper = 'unit_1_%d/' % self.hps.num_residual_units
    if any(n.startswith(deeper) for n in self._names):
      raise ValueError('checkpoint has more residual units than --num_residual_units=%d'
                       % self.hps.num_residual_units)

  # --------------------------------------------------------------------------- the network
  def _v(self, name):
    return self._vars[name]

  def _conv(self, scope, x, stride):
    return tf.nn.conv2d(x, self._v(scope + '/DW'), [1, stride, stride, 1], padding='SAME')

  def _bn(self, scope, x):
    return tf.nn.batch_normalization(x, self._v(scope + '/moving_mean'),
                                     self._v(scope + '/moving_variance'),
                                     self._v(scope + '/beta'), self._v(scope + '/gamma'),
                                     resnet_model.BN_EPSILON)

  def _relu(self, x):
    return tf.nn.leaky_relu(x, alpha=self.hps.relu_leakiness)

  def _residual(self, scope, x, out_filters, stride, activate_before_residual):
    in_filters = x.shape[-1]
    if activate_before_residual:
      x = self._relu(self._bn(scope + '/shared_activation/init_bn', x))
      orig_x = x
    else:
      orig_x = x
      x = self._relu(self._bn(scope + '/residual_only_activation/init_bn', x))
    x = self._conv(scope + '/sub1/conv1', x, stride)
    x = self._relu(self._bn(scope + '/sub2/bn2', x))
    x = self._conv(scope + '/sub2/conv2', x, 1)
    if in_filters != out_filters:
      orig_x = tf.nn.avg_pool2d(orig_x, stride, stride, 'VALID')
      pad = (out_filters - in_filters) // 2
      orig_x = tf.pad(orig_x, [[0, 0], [0, 0], [0, 0], [pad, pad]])
    return x + orig_x

  def features_and_logits(self, images):
    """(raw logits Z [B, K], feature [B, 64]) as resnet_model.build_network in eval mode."""
    x = self._conv('init/init_conv', images, 1)
    filters = (16, 32, resnet_model.FEATURE_DIM)
    for stage, (out_filters, stride) in enumerate(zip(filters, resnet_model.STAGE_STRIDES),
                                                  start=1):
      for i in range(self.hps.num_residual_units):
        x = self._residual('unit_%d_%d' % (stage, i), x, out_filters,
                           stride if i == 0 else 1, stage == 1 and i == 0)
    x = self._relu(self._bn('unit_last/final_bn', x))
    feature = tf.reduce_mean(x, [1, 2])
    logits = tf.compat.v1.nn.xw_plus_b(feature, self._v('logit/DW'), self._v('logit/biases'))
    return logits, feature

  def _forward(self, images):
    self.trace_count += 1  # Python side effect: counts traces, not calls
    raw_logits, _ = self.features_and_logits(images)
    return resnet_model.flip_logits(raw_logits, self.hps.RCE_train)

  def __call__(self, x, training=False):
    """Prediction logits [B, K] of x [B, H, W, C]; `training` is accepted and ignored."""
    del training
    return self._fn(tf.convert_to_tensor(x, tf.float32))
