"""The ResNet of resnet_model.py rebuilt with the Keras 3 functional API: the `model.fit` peer.

Used by benchmarks.train_throughput and benchmarks.gpu_check. Same network as
`resnet_model.build_network(hps, x, 'train')` with the plain (non-bottleneck) residual units:

  init 3x3 conv, 16 filters, stride 1, SAME, no bias
  3 stages x num_residual_units pre-activation units, 16/32/64 filters, strides 1/2/2:
    BN -> leaky ReLU (before the shortcut split in the very first unit, after it otherwise)
    -> 3x3 conv (stride) -> BN -> leaky ReLU -> 3x3 conv; shortcut = identity, or
    avg-pool(stride) + zero channel padding where the width changes
  BN -> leaky ReLU -> global average pool -> dense 10 (with bias)

BatchNormalization(momentum=0.9, epsilon=0.001) (moving = 0.9 moving + 0.1 batch, biased batch
variance, like ours), LeakyReLU(0.1), kernel initializers as resnet_model (He normal over
fan-out for convolutions, variance scaling 1.0 fan-in uniform for the dense layer).

Weight decay: ours adds weight_decay_rate * sum(tf.nn.l2_loss(w)) = 2e-4 * sum(w^2) / 2 over the
conv and dense kernels; Keras' L2(l) adds l * sum(w^2), so the kernels get L2(2e-4 / 2) and the
two losses are the same number.

`build` returns the model and a list of (keras variable, our variable name) pairs, so our
weights can be loaded into it for the same-math check.
"""
import keras
from keras import layers
from keras import ops


def build(num_residual_units=5, image_shape=(28, 28, 1), num_classes=10, leakiness=0.1,
          weight_decay_rate=2e-4):
  """Returns (uncompiled keras.Model images -> logits, [(keras variable, our name), ...])."""
  reg = keras.regularizers.L2(weight_decay_rate / 2.0)
  conv_init = keras.initializers.VarianceScaling(2.0, 'fan_out', 'untruncated_normal')
  pairs = []

  def conv(x, name, filters, stride):
    layer = layers.Conv2D(filters, 3, strides=stride, padding='same', use_bias=False,
                          kernel_initializer=conv_init, kernel_regularizer=reg,
                          name=name.replace('/', '_'))
    y = layer(x)
    pairs.append((layer.kernel, name + '/DW'))
    return y

  def bn_relu(x, name):
    layer = layers.BatchNormalization(momentum=0.9, epsilon=0.001, name=name.replace('/', '_'))
    y = layer(x)
    pairs.extend([(layer.beta, name + '/beta'), (layer.gamma, name + '/gamma'),
                  (layer.moving_mean, name + '/moving_mean'),
                  (layer.moving_variance, name + '/moving_variance')])
    return layers.LeakyReLU(negative_slope=leakiness)(y)

  def unit(x, scope, out_filters, stride, activate_before_residual):
    in_filters = x.shape[-1]
    if activate_before_residual:
      x = bn_relu(x, scope + '/shared_activation/init_bn')
      orig_x = x
    else:
      orig_x = x
      x = bn_relu(x, scope + '/residual_only_activation/init_bn')
    x = conv(x, scope + '/sub1/conv1', out_filters, stride)
    x = bn_relu(x, scope + '/sub2/bn2')
    x = conv(x, scope + '/sub2/conv2', out_filters, 1)
    if in_filters != out_filters:
      orig_x = layers.AveragePooling2D(stride, stride, padding='valid')(orig_x)
      pad = (out_filters - in_filters) // 2
      orig_x = ops.pad(orig_x, [[0, 0], [0, 0], [0, 0], [pad, pad]])
    return layers.Add()([x, orig_x])

  images = keras.Input(shape=tuple(image_shape), name='images')
  x = conv(images, 'init/init_conv', 16, 1)
  for stage, (filters, stride) in enumerate(zip((16, 32, 64), (1, 2, 2)), start=1):
    for i in range(num_residual_units):
      x = unit(x, 'unit_%d_%d' % (stage, i), filters, stride if i == 0 else 1,
               stage == 1 and i == 0)
  x = bn_relu(x, 'unit_last/final_bn')
  x = layers.GlobalAveragePooling2D()(x)
  dense = layers.Dense(num_classes, kernel_regularizer=reg, name='logit',
                       kernel_initializer=keras.initializers.VarianceScaling(
                           1.0, 'fan_in', 'uniform'))
  logits = dense(x)
  pairs.extend([(dense.kernel, 'logit/DW'), (dense.bias, 'logit/biases')])
  return keras.Model(images, logits, name='resnet_keras'), pairs


def compile_for_training(model, lrn_rate=0.1, momentum=0.9):
  """SGD with momentum (constant lr), softmax CE from logits on one-hot labels, no metrics.

  Keras defaults otherwise: jit_compile='auto' (XLA off on a CPU-only machine),
  steps_per_execution=1, run_eagerly=False (one tf.function call per step).
  """
  model.compile(optimizer=keras.optimizers.SGD(learning_rate=lrn_rate, momentum=momentum),
                loss=keras.losses.CategoricalCrossentropy(from_logits=True))
  return model


def momentum_slot(model, variable):
  """The SGD momentum buffer of `variable` (Keras: m <- 0.9 m - lr g; w <- w + m)."""
  optimizer = model.optimizer
  index = optimizer._get_variable_index(variable)  # pylint: disable=protected-access
  return optimizer.momentums[index]
