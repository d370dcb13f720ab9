"""Tests of resnet_model.py: shapes, size, variable names, CE/RCE losses against numpy, the RCE
flip, and the batch-norm moving averages."""
import numpy as np
import pytest
from scipy.special import log_softmax, softmax
import tensorflow as tf

import resnet_model  # pylint: disable=g-bad-import-order

tf.compat.v1.disable_eager_execution()
tf1 = tf.compat.v1

SMALL = resnet_model.default_hparams(num_residual_units=1)


def onehot(labels, k=10):
  return np.eye(k, dtype=np.float32)[labels]


def numpy_rce(logits, labels, k=10):
  reverse = (1.0 - onehot(labels, k)) / (k - 1.0)
  return np.mean(-np.sum(reverse * log_softmax(logits.astype(np.float64), axis=1), axis=1))


def numpy_ce(logits, labels):
  lsm = log_softmax(logits.astype(np.float64), axis=1)
  return np.mean(-lsm[np.arange(len(labels)), labels])


def variables_by_name():
  return {v.op.name: v for v in tf1.global_variables()}


# ---- shapes, size, names -----------------------------------------------------------------


@pytest.mark.parametrize('shape', [(28, 28, 1), (32, 32, 3)], ids=['mnist', 'cifar10'])
def test_layer_outputs_every_stage_without_new_variables(shape):
  """The layers detectors read: input, each stage, the feature; the same variables."""
  with tf.Graph().as_default():
    images = tf1.placeholder(tf.float32, [None] + list(shape))
    plain = resnet_model.build_network(SMALL, images, 'eval')
    names = sorted(variables_by_name())
    again = resnet_model.build_network(SMALL, images, 'eval')  # shares every variable
    assert sorted(variables_by_name()) == names
    layers = again.layers
    assert tuple(layers) == resnet_model.LAYER_NAMES
    size = shape[0]
    expected = [[None] + list(shape), [None, size, size, 16], [None, size // 2, size // 2, 32],
                [None, size // 4, size // 4, 64], [None, 64]]
    assert [layers[n].shape.as_list() for n in layers] == expected
    assert layers['input'] is images and layers['feature'] is again.feature
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      x = np.random.RandomState(0).uniform(-0.5, 0.5, (2,) + shape)
      f1, f2 = sess.run([plain.feature, layers['feature']], {images: x})
    np.testing.assert_array_equal(f1, f2)


@pytest.mark.parametrize('shape', [(28, 28, 1), (32, 32, 3)], ids=['mnist', 'cifar10'])
@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_logits_and_feature_shapes_with_dynamic_batch(shape, mode):
  with tf.Graph().as_default():
    tf1.set_random_seed(0)
    images = tf1.placeholder(tf.float32, [None] + list(shape))
    net = resnet_model.build_network(SMALL, images, mode)
    logits, feature, updates = net.raw_logits, net.feature, net.update_ops
    assert logits.shape.as_list() == [None, 10]
    assert feature.shape.as_list() == [None, resnet_model.FEATURE_DIM] == [None, 64]
    assert (len(updates) > 0) == (mode == 'train')
    weights = variables_by_name()
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      for batch in (1, 3):
        x = np.random.RandomState(batch).uniform(-0.5, 0.5, (batch,) + shape)
        z, f, w, b = sess.run([logits, feature, weights['logit/DW'], weights['logit/biases']],
                              {images: x})
        assert z.shape == (batch, 10) and f.shape == (batch, 64)
        assert np.isfinite(z).all() and np.isfinite(f).all()
        # The feature is the layer the fully connected logits are computed from.
        np.testing.assert_allclose(z, f @ w + b, rtol=1e-4, atol=1e-5)


def test_resnet32_parameter_count_and_flops():
  hps = resnet_model.default_hparams(num_residual_units=5)
  params, flops = resnet_model.count_params_and_flops(hps, (32, 32, 3))
  assert 450000 <= params <= 470000, params
  assert flops > 0
  mnist_params, mnist_flops = resnet_model.count_params_and_flops(hps, (28, 28, 1))
  assert params - mnist_params == 3 * 3 * 2 * 16  # only the init conv sees the channels
  assert 0 < mnist_flops < flops


def test_original_variable_names_and_shapes():
  hps = resnet_model.default_hparams(num_residual_units=2)
  with tf.Graph().as_default():
    images = tf1.placeholder(tf.float32, [None, 28, 28, 1])
    resnet_model.build_network(hps, images, 'train')
    names = variables_by_name()
    expected_shapes = {
        'init/init_conv/DW': [3, 3, 1, 16],
        'unit_1_0/shared_activation/init_bn/beta': [16],
        'unit_1_0/shared_activation/init_bn/gamma': [16],
        'unit_1_0/sub1/conv1/DW': [3, 3, 16, 16],
        'unit_1_0/sub2/bn2/moving_mean': [16],
        'unit_1_1/residual_only_activation/init_bn/moving_variance': [16],
        'unit_2_0/residual_only_activation/init_bn/beta': [16],
        'unit_2_0/sub1/conv1/DW': [3, 3, 16, 32],
        'unit_2_0/sub2/conv2/DW': [3, 3, 32, 32],
        'unit_3_0/sub1/conv1/DW': [3, 3, 32, 64],
        'unit_3_1/sub2/bn2/gamma': [64],
        'unit_last/final_bn/beta': [64],
        'unit_last/final_bn/gamma': [64],
        'unit_last/final_bn/moving_mean': [64],
        'unit_last/final_bn/moving_variance': [64],
        'logit/DW': [64, 10],
        'logit/biases': [10],
    }
    for name, shape in expected_shapes.items():
      assert name in names, (name, sorted(names))
      assert names[name].shape.as_list() == shape, name
    assert not names['unit_last/final_bn/moving_mean'].trainable
    assert names['logit/DW'].trainable
    # model_variables() is the network, nothing else; a second copy shares every variable.
    tf1.train.get_or_create_global_step()
    model_vars = resnet_model.model_variables()
    assert {v.op.name for v in model_vars} == set(names)
    count = len(tf1.global_variables())
    resnet_model.build_network(hps, images * 1.0, 'eval')
    resnet_model.make_logits_fn(hps)(images)
    assert len(tf1.global_variables()) == count


# ---- losses ------------------------------------------------------------------------------


def _loss_and_grad(loss_fn, logits_value, labels):
  with tf.Graph().as_default():
    z = tf1.placeholder(tf.float32, logits_value.shape)
    loss = loss_fn(z, tf.constant(onehot(labels)))
    grad, = tf.gradients(loss, z)
    with tf1.Session() as sess:
      return sess.run([loss, grad], {z: logits_value})


def naive_log_softmax_rce(logits, labels):
  """The original's -sum R log(softmax(z)) in float32 (computed in numpy: Grappler would
  rewrite a TF Log(Softmax) into LogSoftmax)."""
  z = logits.astype(np.float32)
  e = np.exp(z - z.max(axis=1, keepdims=True))
  with np.errstate(divide='ignore', invalid='ignore'):
    log_p = np.log(e / e.sum(axis=1, keepdims=True))
    return np.mean(-np.sum((1.0 - onehot(labels)) / 9.0 * log_p, axis=1))


@pytest.mark.parametrize('scale', [1.0, 30.0])
def test_rce_loss_matches_numpy(scale):
  rng = np.random.RandomState(0)
  logits = (rng.normal(size=(8, 10)) * scale).astype(np.float32)
  labels = rng.randint(0, 10, 8)
  loss, grad = _loss_and_grad(resnet_model.rce_loss, logits, labels)
  assert loss == pytest.approx(numpy_rce(logits, labels), rel=1e-5)
  # d/dz of -sum_j R_j log softmax(z)_j is softmax(z) - R (R sums to 1), over the batch mean.
  reverse = (1.0 - onehot(labels)) / 9.0
  np.testing.assert_allclose(grad, (softmax(logits.astype(np.float64), 1) - reverse) / 8,
                             rtol=1e-4, atol=1e-7)
  with tf.Graph().as_default(), tf1.Session() as sess:
    np.testing.assert_allclose(sess.run(resnet_model.reverse_labels(tf.constant(onehot(labels)))),
                               reverse, rtol=1e-6)
    assert sess.run(resnet_model.classification_loss(
        tf.constant(logits), tf.constant(onehot(labels)), rce=True)) == pytest.approx(loss)


@pytest.mark.parametrize('k', [2, 10, 100])
def test_rce_loss_for_k_classes_matches_numpy(k):
  """The reverse label is 1/(K-1) off the true class, whatever K (cifar100: 100)."""
  rng = np.random.RandomState(k)
  logits = (rng.normal(size=(12, k)) * 3).astype(np.float32)
  labels = rng.randint(0, k, 12)
  y = np.eye(k, dtype=np.float32)[labels]
  with tf.Graph().as_default(), tf1.Session() as sess:
    reverse, loss = sess.run([resnet_model.reverse_labels(tf.constant(y)),
                              resnet_model.rce_loss(tf.constant(logits), tf.constant(y))])
  expected = (1.0 - y) / (k - 1.0)
  np.testing.assert_allclose(reverse, expected, rtol=1e-6)
  np.testing.assert_allclose(reverse.sum(axis=1), 1.0, rtol=1e-6)
  assert loss == pytest.approx(numpy_rce(logits, labels, k), rel=1e-5)


def test_network_width_is_the_class_count():
  with tf.Graph().as_default():
    images = tf1.placeholder(tf.float32, [None, 32, 32, 3])
    net = resnet_model.build_network(SMALL._replace(num_classes=100, RCE_train=True), images,
                                     'eval')
    assert net.logits.shape.as_list() == net.raw_logits.shape.as_list() == [None, 100]


def test_rce_loss_and_gradient_finite_for_huge_logits():
  rng = np.random.RandomState(1)
  logits = (rng.normal(size=(6, 10)) * 1e4).astype(np.float32)
  labels = rng.randint(0, 10, 6)
  loss, grad = _loss_and_grad(resnet_model.rce_loss, logits, labels)
  assert not np.isfinite(naive_log_softmax_rce(logits, labels))  # the original log(softmax) overflows at this scale
  assert np.isfinite(loss) and np.isfinite(grad).all()
  assert loss == pytest.approx(numpy_rce(logits, labels), rel=1e-5)
  reverse = (1.0 - onehot(labels)) / 9.0
  np.testing.assert_allclose(grad, (softmax(logits.astype(np.float64), 1) - reverse) / 6,
                             atol=1e-6)


def test_ce_loss_matches_numpy():
  rng = np.random.RandomState(2)
  logits = (rng.normal(size=(8, 10)) * 3).astype(np.float32)
  labels = rng.randint(0, 10, 8)
  loss, grad = _loss_and_grad(resnet_model.ce_loss, logits, labels)
  assert loss == pytest.approx(numpy_ce(logits, labels), rel=1e-5)
  np.testing.assert_allclose(grad, (softmax(logits.astype(np.float64), 1) - onehot(labels)) / 8,
                             rtol=1e-4, atol=1e-7)
  with tf.Graph().as_default(), tf1.Session() as sess:
    assert sess.run(resnet_model.classification_loss(
        tf.constant(logits), tf.constant(onehot(labels)), rce=False)) == pytest.approx(loss)


# ---- the flip ----------------------------------------------------------------------------


def test_flip_logits_numpy():
  z = np.random.RandomState(3).normal(size=(5, 10))
  np.testing.assert_array_equal(resnet_model.flip_logits(z, True), -z)
  assert resnet_model.flip_logits(z, False) is z


def test_rce_model_predicts_with_negated_logits_ce_unchanged():
  hps_rce = SMALL._replace(RCE_train=True)
  hps_ce = SMALL._replace(RCE_train=False)
  rng = np.random.RandomState(4)
  x = rng.uniform(-0.5, 0.5, (16, 28, 28, 1)).astype(np.float32)
  labels = rng.randint(0, 10, 16)
  with tf.Graph().as_default():
    tf1.set_random_seed(4)
    images = tf1.placeholder(tf.float32, [None, 28, 28, 1])
    y = tf1.placeholder(tf.float32, [None, 10])
    rce = resnet_model.build_network(hps_rce, images, 'eval')
    ce = resnet_model.build_network(hps_ce, images, 'eval')  # shares the variables
    costs = {m: resnet_model.classification_loss(net.raw_logits, y, m == 'rce')
             + resnet_model.weight_decay(hps_ce) for m, net in (('rce', rce), ('ce', ce))}
    rce_fn_logits = resnet_model.make_logits_fn(hps_rce)(images)
    ce_fn_logits = resnet_model.make_logits_fn(hps_ce)(images)
    dws = [v for v in tf1.trainable_variables() if v.op.name.endswith('DW')]
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      # Spread the logits so that their ranking is unambiguous.
      w = [v for v in dws if v.op.name == 'logit/DW'][0]
      sess.run(w.assign(w * 10.0))
      out = sess.run({'z_rce': rce.raw_logits, 'z_ce': ce.raw_logits,
                      'p_rce': tf.nn.softmax(rce.logits), 'p_ce': tf.nn.softmax(ce.logits),
                      'cost_rce': costs['rce'], 'cost_ce': costs['ce'],
                      'fn_rce': rce_fn_logits, 'fn_ce': ce_fn_logits, 'dws': dws},
                     {images: x, y: onehot(labels)})
  z = out['z_rce'].astype(np.float64)
  np.testing.assert_array_equal(out['z_rce'], out['z_ce'])
  assert rce.feature.shape.as_list() == [None, 64]
  np.testing.assert_allclose(out['p_rce'], softmax(-z, axis=1), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(out['p_ce'], softmax(z, axis=1), rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(np.argmax(out['p_rce'], 1), np.argmax(-z, 1))
  np.testing.assert_array_equal(np.argmax(out['p_rce'], 1), np.argmin(z, 1))
  np.testing.assert_array_equal(np.argmax(out['p_ce'], 1), np.argmax(z, 1))
  assert (np.argmax(-z, 1) != np.argmax(z, 1)).all()
  np.testing.assert_allclose(out['fn_rce'], -out['z_rce'], rtol=1e-6)
  np.testing.assert_allclose(out['fn_ce'], out['z_ce'], rtol=1e-6)
  # The cost is the loss on the raw logits plus weight decay on the DW weights.
  decay = 2e-4 * sum(0.5 * np.sum(np.square(w.astype(np.float64))) for w in out['dws'])
  assert out['cost_rce'] == pytest.approx(numpy_rce(out['z_rce'], labels) + decay, rel=1e-5)
  assert out['cost_ce'] == pytest.approx(numpy_ce(out['z_ce'], labels) + decay, rel=1e-5)


# ---- batch norm --------------------------------------------------------------------------


def test_train_mode_bn_updates_moving_averages_with_biased_batch_variance():
  # 4x4 inputs: the stages see 4x4, 2x2 and 1x1 maps, so with a batch of 2 the last BN layers
  # average over only n = 2 values, where the biased variance is half the unbiased one.
  x = np.random.RandomState(5).uniform(-0.5, 0.5, (2, 4, 4, 1)).astype(np.float32)
  with tf.Graph().as_default() as graph:
    tf1.set_random_seed(5)
    images = tf.constant(x)
    updates = resnet_model.build_network(SMALL, images, 'train').update_ops
    bn_ops = [op for op in graph.get_operations() if op.type.startswith('FusedBatchNorm')]
    assert len(bn_ops) == 7 and len(updates) == 2 * len(bn_ops)
    names = variables_by_name()
    scopes = [op.name.rsplit('/', 1)[0] for op in bn_ops]
    inputs = [op.inputs[0] for op in bn_ops]
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      first_inputs, _ = sess.run([inputs, updates])
      after_one = sess.run({s: (names[s + '/moving_mean'], names[s + '/moving_variance'])
                            for s in scopes})
      second_inputs, _ = sess.run([inputs, updates])
      after_two = sess.run({s: (names[s + '/moving_mean'], names[s + '/moving_variance'])
                            for s in scopes})
  checked_small_n = False
  for scope, value, value2 in zip(scopes, first_inputs, second_inputs):
    np.testing.assert_allclose(value, value2, rtol=1e-6, atol=1e-7)  # same input both runs
    value = value.astype(np.float64)
    n = value.size // value.shape[-1]
    mean = value.mean(axis=(0, 1, 2))
    biased = value.var(axis=(0, 1, 2))
    mm1, mv1 = after_one[scope]
    np.testing.assert_allclose(mm1, 0.1 * mean, rtol=1e-4, atol=1e-6, err_msg=scope)
    np.testing.assert_allclose(mv1, 0.9 + 0.1 * biased, rtol=1e-4, atol=1e-6, err_msg=scope)
    mm2, mv2 = after_two[scope]
    np.testing.assert_allclose(mm2, 0.19 * mean, rtol=1e-4, atol=1e-6, err_msg=scope)
    np.testing.assert_allclose(mv2, 0.81 + 0.19 * biased, rtol=1e-4, atol=1e-6, err_msg=scope)
    if n == 2:
      unbiased = biased * n / (n - 1)
      assert np.abs(mv1 - (0.9 + 0.1 * unbiased)).max() > 1e-3, scope  # the test can tell
      checked_small_n = True
  assert checked_small_n


def test_eval_mode_uses_moving_statistics():
  x = np.random.RandomState(6).uniform(-0.5, 0.5, (3, 8, 8, 1)).astype(np.float32)
  with tf.Graph().as_default():
    tf1.set_random_seed(6)
    images = tf1.placeholder(tf.float32, [None, 8, 8, 1])
    net = resnet_model.build_network(SMALL, images, 'eval')
    eval_logits, updates = net.raw_logits, net.update_ops
    assert updates == []
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      # Eval mode does not depend on the batch: each image alone gives the same logits.
      together = sess.run(eval_logits, {images: x})
      alone = np.concatenate([sess.run(eval_logits, {images: x[i:i + 1]}) for i in range(3)])
  np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)


def numpy_conv_same(x, w, stride):
  """TF's conv2d with padding SAME (extra padding row/column at the end), float64."""
  k, h = w.shape[0], x.shape[1]
  out = -(-h // stride)
  pad = max((out - 1) * stride + k - h, 0)
  x = np.pad(x, [(0, 0), (pad // 2, pad - pad // 2), (pad // 2, pad - pad // 2), (0, 0)])
  patches = np.stack([np.stack([x[:, i:i + stride * out:stride, j:j + stride * out:stride]
                                for j in range(k)], axis=3) for i in range(k)], axis=3)
  return np.einsum('bhwijc,ijcd->bhwd', patches, w)


def numpy_eval_resnet(x, weights, units):
  """Pre-activation ResNet in eval mode written out in numpy: the reference for build_network."""
  def bn(scope, x):
    v = lambda name: weights[scope + '/' + name]
    return (x - v('moving_mean')) / np.sqrt(v('moving_variance') + 1e-3) * v('gamma') + v('beta')

  relu = lambda x: np.where(x > 0, x, 0.1 * x)
  x = numpy_conv_same(x, weights['init/init_conv/DW'], 1)
  for stage, (out_f, stride) in enumerate([(16, 1), (32, 2), (64, 2)], start=1):
    for i in range(units):
      scope, stride = 'unit_%d_%d/' % (stage, i), stride if i == 0 else 1
      if stage == 1 and i == 0:
        x = orig = relu(bn(scope + 'shared_activation/init_bn', x))
      else:
        orig, x = x, relu(bn(scope + 'residual_only_activation/init_bn', x))
      x = numpy_conv_same(x, weights[scope + 'sub1/conv1/DW'], stride)
      x = relu(bn(scope + 'sub2/bn2', x))
      x = numpy_conv_same(x, weights[scope + 'sub2/conv2/DW'], 1)
      if orig.shape[-1] != out_f:
        b, h, w, c = orig.shape
        orig = orig.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
        orig = np.pad(orig, [(0, 0)] * 3 + [((out_f - c) // 2,) * 2])
      x = x + orig
  feature = relu(bn('unit_last/final_bn', x)).mean(axis=(1, 2))
  return feature @ weights['logit/DW'] + weights['logit/biases'], feature


def test_eval_mode_matches_numpy_reference_with_moving_statistics():
  # Random BN statistics and affine parameters (negative gamma included), so that folding the
  # BN after each unit's first conv into that conv is checked, not just the identity BN.
  rng = np.random.RandomState(7)
  x = rng.uniform(-0.5, 0.5, (3, 8, 8, 1)).astype(np.float32)
  with tf.Graph().as_default():
    tf1.set_random_seed(7)
    images = tf1.placeholder(tf.float32, [None, 8, 8, 1])
    net = resnet_model.build_network(SMALL, images, 'eval')
    logits, feature = net.raw_logits, net.feature
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      for name, var in variables_by_name().items():
        shape = var.shape.as_list()
        if name.endswith(('beta', 'moving_mean')):
          var.load(rng.uniform(-0.5, 0.5, shape).astype(np.float32), sess)
        elif name.endswith('gamma'):
          var.load(rng.uniform(-1.5, 1.5, shape).astype(np.float32), sess)
        elif name.endswith('moving_variance'):
          var.load(rng.uniform(0.2, 2.0, shape).astype(np.float32), sess)
      weights = {n: v.astype(np.float64) for n, v in sess.run(variables_by_name()).items()}
      got_logits, got_feature = sess.run([logits, feature], {images: x})
  want_logits, want_feature = numpy_eval_resnet(x.astype(np.float64), weights, 1)
  np.testing.assert_allclose(got_feature, want_feature, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(got_logits, want_logits, rtol=1e-4, atol=1e-5)


def test_unknown_mode_is_rejected():
  with tf.Graph().as_default():
    images = tf1.placeholder(tf.float32, [None, 28, 28, 1])
    with pytest.raises(ValueError, match='mode'):
      resnet_model.build_network(SMALL, images, 'attack')
