"""Property tests of attacks/ on small ResNets trained on the bundled digits (seeded, CPU).

One graph for the module: an RCE and a CE ResNet-8 (num_residual_units=1, variable scopes
'rce' and 'ce'), trained 300 steps each, and every attack graph, built once; the graph is
then finalized, so any op an attack tried to add while running would fail the test.
"""
import time
import types

import numpy as np
import pytest
import tensorflow as tf

from rce.tables import attack_names  # pylint: disable=g-bad-import-order
from rce.attacking import attack_runner
import attacks
from attacks import adaptive
import dataset_input
import resnet_model

tf1 = tf.compat.v1
HIGHCON = attacks.get_attack('carliniL2_highcon').info.cw_stages[0].confidence
tf1.disable_eager_execution()

TRAIN_STEPS = 300
TRAIN_BATCH = 64
NUM_ATTACKED = 100  # test images attacked
CW_ITERATIONS = 100
CW_SEARCH_STEPS = 4
CW_SMALL = 25  # images for the C&W-hc and extra-loss checks
SWEEP = (0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2)
TOL = 1e-6
ADAPTIVE = ('pgd_ce', 'pgd_cw', 'pgd_hc', 'pgd_lagrangian', 'pgd_selective', 'pgd_orthogonal')


def _scoped_logits_fn(hps, scope):
  """logits_fn of the model in variable scope `scope`, wherever it is called from."""
  base = resnet_model.make_logits_fn(hps)

  def logits_fn(x):
    with tf1.variable_scope(scope, reuse=tf1.AUTO_REUSE):
      return base(x)

  return logits_fn


def _train(sess, hps, scope, train_x, train_y, seed):
  """Builds and runs a short momentum training loop (BN updates included)."""
  x = tf1.placeholder(tf.float32, [TRAIN_BATCH, 28, 28, 1])
  y = tf1.placeholder(tf.float32, [TRAIN_BATCH, 10])
  with tf1.variable_scope(scope, reuse=tf1.AUTO_REUSE):
    net = resnet_model.build_network(hps, x, 'train')
  update_ops = net.update_ops
  variables = tf1.trainable_variables(scope.name + '/')
  loss = (resnet_model.classification_loss(net.raw_logits, y, hps.RCE_train)
          + resnet_model.weight_decay(hps, variables))
  optimizer = tf1.train.MomentumOptimizer(0.05, 0.9)
  with tf.control_dependencies(update_ops):
    train_op = optimizer.minimize(loss, var_list=variables)
  sess.run(tf1.variables_initializer(tf1.global_variables(scope.name + '/')
                                     + optimizer.variables()))
  rng = np.random.RandomState(seed)
  onehot = np.eye(10, dtype=np.float32)
  for _ in range(TRAIN_STEPS):
    idx = rng.randint(0, len(train_x), TRAIN_BATCH)
    sess.run(train_op, {x: train_x[idx], y: onehot[train_y[idx]]})


@pytest.fixture(scope='module')
def lab():
  """Trains both models and builds every attack graph once; yields a namespace."""
  start = time.time()
  train_x, train_y, test_x, test_y = dataset_input.digits_arrays()
  train_x = (train_x - 0.5)[..., None].astype(np.float32)
  test_x = (test_x - 0.5)[..., None].astype(np.float32)
  graph = tf.Graph()
  with graph.as_default():
    tf1.set_random_seed(1234)
    sess = tf1.Session(graph=graph, config=tf1.ConfigProto(
        intra_op_parallelism_threads=2, inter_op_parallelism_threads=1))
    hps_rce = resnet_model.default_hparams(num_residual_units=1, RCE_train=True)
    hps_ce = resnet_model.default_hparams(num_residual_units=1, RCE_train=False)
    with tf1.variable_scope('rce') as rce_scope:
      pass
    with tf1.variable_scope('ce') as ce_scope:
      pass
    _train(sess, hps_rce, rce_scope, train_x, train_y, seed=0)
    _train(sess, hps_ce, ce_scope, train_x, train_y, seed=1)
    rce_fn = _scoped_logits_fn(hps_rce, rce_scope)
    ce_fn = _scoped_logits_fn(hps_ce, ce_scope)
    # The raw (unflipped) logits of the RCE model, to show the flip matters.
    raw_fn = _scoped_logits_fn(hps_rce._replace(RCE_train=False), rce_scope)

    x = tf1.placeholder(tf.float32, [None, 28, 28, 1], name='x')
    eps = tf1.placeholder(tf.float32, [], name='eps')
    y_target = tf1.placeholder(tf.float32, [None, 10], name='y_target')
    ns = types.SimpleNamespace(sess=sess, graph=graph, x=x, eps=eps, y_target=y_target)
    ns.logits = rce_fn(x)
    ns.raw_logits = raw_fn(x)
    ns.ce_logits = ce_fn(x)
    ns.ops = {
        'random': attacks.random_noise(x, eps, seed=7),
        'fgsm': attacks.fgsm(rce_fn, x, eps),
        'bim': attacks.bim(rce_fn, x, eps),
        'tgsm': attacks.ilcm(rce_fn, x, eps),
        'jsma': attacks.jsma(rce_fn, x, eps),
    }
    ns.fgsm_grad_sign = tf.sign(tf.gradients(tf.reduce_sum(
        tf.nn.softmax_cross_entropy_with_logits(
            labels=attacks.gradient.model_prediction(ns.logits), logits=ns.logits)), x)[0])
    ns.jsma_targeted = attacks.jsma(rce_fn, x, eps, y_target=y_target)
    ns.jsma_per_example = attacks.jsma(rce_fn, x, eps, y_target=y_target, per_example=True)
    ns.cw = attacks.CarliniWagnerL2(
        sess, rce_fn, (28, 28, 1), batch_size=NUM_ATTACKED, max_iterations=CW_ITERATIONS,
        binary_search_steps=CW_SEARCH_STEPS, num_classes=10)
    # Tiny and cheap, to check chunking and padding.
    ns.cw_tiny = attacks.CarliniWagnerL2(sess, rce_fn, (28, 28, 1), batch_size=4,
                                         max_iterations=10, binary_search_steps=2,
                                         num_classes=10)
    ns.cw_hc = attacks.CarliniWagnerL2(
        sess, ce_fn, (28, 28, 1), batch_size=CW_SMALL,
        confidence=HIGHCON,
        max_iterations=CW_ITERATIONS, binary_search_steps=CW_SEARCH_STEPS, num_classes=10)
    ns.cw_extra = attacks.CarliniWagnerL2(
        sess, ce_fn, (28, 28, 1), batch_size=CW_SMALL, max_iterations=CW_ITERATIONS // 2,
        binary_search_steps=CW_SEARCH_STEPS, extra_loss_fn=_toy_f2(ce_fn), num_classes=10)
    ns.toy_f2 = _toy_f2(ce_fn)(x, y_target)
    ns.ilcm_onehot = attacks.ilcm(rce_fn, x, eps, target='onehot')
    # Per-example abort early: the same examples at batch 1 and batch 10.
    small = dict(max_iterations=30, binary_search_steps=2, num_classes=10)
    ns.cw_b1 = attacks.CarliniWagnerL2(sess, rce_fn, (28, 28, 1), batch_size=1, **small)
    ns.cw_b10 = attacks.CarliniWagnerL2(sess, rce_fn, (28, 28, 1), batch_size=10, **small)
    # C&W-wb's two runs with a detector term that always holds (f2 = -1).
    ns.cw_stage1 = attacks.CarliniWagnerL2(
        sess, ce_fn, (28, 28, 1), batch_size=CW_SMALL, confidence=5.0,
        max_iterations=CW_ITERATIONS, binary_search_steps=CW_SEARCH_STEPS, initial_const=10.0,
        num_classes=10)
    ns.cw_stage2 = attacks.CarliniWagnerL2(
        sess, ce_fn, (28, 28, 1), batch_size=CW_SMALL, confidence=5.0, max_iterations=50,
        binary_search_steps=2, initial_const=100.0, num_classes=10,
        extra_loss_fn=lambda images, _: -tf.ones([tf.shape(images)[0]]))
    graph.finalize()

  ns.test_x, ns.test_y = test_x[:NUM_ATTACKED], test_y[:NUM_ATTACKED]
  ns.clean_logits = sess.run(ns.logits, {x: ns.test_x})
  ns.clean_ce_logits = sess.run(ns.ce_logits, {x: ns.test_x})
  # C&W targets: a random class other than the true one (seeded).
  shift = np.random.RandomState(5).randint(1, 10, NUM_ATTACKED)
  ns.cw_target = (ns.test_y + shift) % 10
  ns.run = lambda op, images, e, feed=None: sess.run(op, {**(feed or {}), x: images, eps: e})
  ns.predict = lambda images: sess.run(ns.logits, {x: images}).argmax(1)
  print('lab fixture: %.1fs' % (time.time() - start))
  yield ns
  sess.close()


def _toy_f2(logits_fn, min_prob=0.9):
  """A detector-like extra term: f2 = log(min_prob) - log p_t(x) <= 0 iff p_t >= min_prob."""

  def f2(x_new, y_target):
    log_p = tf.nn.log_softmax(logits_fn(x_new))
    return np.log(min_prob) - tf.reduce_sum(y_target * log_p, axis=1)

  return f2


def _onehot(labels):
  return np.eye(10, dtype=np.float32)[labels]


def _l2(a, b):
  return np.sqrt(np.sum(np.square(a - b).reshape(len(a), -1), axis=1))


# ---- the model and the flip -------------------------------------------------------------


def test_rce_model_is_trained_and_flip_matters(lab):
  flipped = (lab.clean_logits.argmax(1) == lab.test_y).mean()
  raw = (lab.sess.run(lab.raw_logits, {lab.x: lab.test_x}).argmax(1) == lab.test_y).mean()
  ce = (lab.clean_ce_logits.argmax(1) == lab.test_y).mean()
  assert flipped >= 0.8, flipped
  assert raw <= 0.2, raw
  assert ce >= 0.8, ce


def test_fgsm_lowers_flipped_accuracy_of_rce_model(lab):
  clean = (lab.clean_logits.argmax(1) == lab.test_y).mean()
  adv = lab.run(lab.ops['fgsm'], lab.test_x, 0.1)
  accuracy = (lab.predict(adv) == lab.test_y).mean()
  assert accuracy < clean - 0.3, (clean, accuracy)


# ---- ranges, norms, identity --------------------------------------------------------------


@pytest.mark.parametrize('name', ['random', 'fgsm', 'bim', 'tgsm', 'jsma'])
def test_outputs_in_range_and_eps_zero_is_identity(lab, name):
  images = lab.test_x[:10]
  for e in (0.1, 0.3):
    adv = lab.run(lab.ops[name], images, e)
    assert adv.shape == images.shape
    assert adv.min() >= -0.5 and adv.max() <= 0.5
    assert not np.array_equal(adv, images)
  np.testing.assert_array_equal(lab.run(lab.ops[name], images, 0.0), images)


def test_random_noise_is_uniform_within_eps(lab):
  interior = (lab.test_x > -0.4) & (lab.test_x < 0.4)
  delta = (lab.run(lab.ops['random'], lab.test_x, 0.1) - lab.test_x)[interior]
  assert np.abs(delta).max() <= 0.1 + TOL
  assert np.abs(delta.mean()) < 0.01
  assert np.abs(delta).mean() == pytest.approx(0.05, abs=0.005)


def test_fgsm_moves_every_unclipped_pixel_by_exactly_eps(lab):
  eps = 0.07
  adv = lab.run(lab.ops['fgsm'], lab.test_x, eps)
  sign = lab.sess.run(lab.fgsm_grad_sign, {lab.x: lab.test_x})
  expected = np.clip(lab.test_x + eps * sign, -0.5, 0.5)
  np.testing.assert_allclose(adv, expected, atol=TOL)
  unclipped = (adv > -0.5) & (adv < 0.5) & (sign != 0)
  assert unclipped.mean() > 0.3
  np.testing.assert_allclose(np.abs(adv - lab.test_x)[unclipped], eps, atol=TOL)


@pytest.mark.parametrize('name', ['bim', 'tgsm'])
def test_iterative_attacks_stay_in_eps_ball(lab, name):
  for e in (0.05, 0.2):
    adv = lab.run(lab.ops[name], lab.test_x, e)
    assert np.abs(adv - lab.test_x).max() <= e + TOL
    assert adv.min() >= -0.5 and adv.max() <= 0.5


# ---- targeted success ---------------------------------------------------------------------


def test_ilcm_reaches_least_likely_class(lab):
  adv = lab.run(lab.ops['tgsm'], lab.test_x, 0.3)
  least_likely = lab.clean_logits.argmin(1)
  assert (lab.predict(adv) == least_likely).mean() >= 0.7


def test_jsma_reaches_target_changing_at_most_100_pixels(lab):
  adv = lab.run(lab.ops['jsma'], lab.test_x, 1.0)
  least_likely = lab.clean_logits.argmin(1)
  assert (lab.predict(adv) == least_likely).mean() >= 0.7
  changed = (adv != lab.test_x).reshape(len(adv), -1).sum(1)
  assert changed.max() <= 100
  assert np.all(adv >= lab.test_x)  # JSMA here only increases pixels
  assert adv.min() >= -0.5 and adv.max() <= 0.5


def test_jsma_batch_equals_per_example(lab):
  images = lab.test_x[:6]
  targets = _onehot(lab.cw_target[:6])
  feed = {lab.y_target: targets}
  batch = lab.run(lab.jsma_targeted, images, 1.0, feed)
  mapped = lab.run(lab.jsma_per_example, images, 1.0, feed)  # in-graph, one at a time
  single = np.concatenate([  # the same batch graph fed one example at a time
      lab.run(lab.jsma_targeted, images[i:i + 1], 1.0, {lab.y_target: targets[i:i + 1]})
      for i in range(len(images))])
  np.testing.assert_array_equal(mapped, single)
  assert (batch != images).any()
  # CPU conv kernels round differently for different batch sizes (logits differ by ~1e-7),
  # which can flip a near-tied pixel choice late in a long run: allow one such example.
  identical = [np.array_equal(b, s) for b, s in zip(batch, single)]
  assert sum(identical) >= len(images) - 1, identical
  reached = lambda adv: lab.predict(adv) == lab.cw_target[:6]
  np.testing.assert_array_equal(reached(batch), reached(single))


# ---- Carlini-Wagner -----------------------------------------------------------------------


@pytest.fixture(scope='module')
def cw_run(lab):
  adv = lab.cw.attack(lab.test_x, _onehot(lab.cw_target))
  return adv, lab.cw.last_success.copy(), lab.cw.last_l2.copy()


def test_carlini_reaches_random_target_with_small_l2(lab, cw_run):
  adv, success, l2 = cw_run
  assert adv.shape == lab.test_x.shape
  assert adv.min() >= -0.5 and adv.max() <= 0.5
  assert success.mean() >= 0.8, success.mean()
  np.testing.assert_array_equal(lab.predict(adv)[success], lab.cw_target[success])
  np.testing.assert_array_equal(adv[~success], lab.test_x[~success])
  np.testing.assert_allclose(l2[success], _l2(adv, lab.test_x)[success], rtol=1e-5)
  assert np.all(np.isinf(l2[~success]))
  # BIM (untargeted) at the smallest swept eps where it fools at least as often as C&W.
  for e in SWEEP:
    bim_adv = lab.run(lab.ops['bim'], lab.test_x, e)
    fooled = lab.predict(bim_adv) != lab.test_y
    if fooled.mean() >= success.mean():
      break
  both = success & fooled
  assert both.sum() >= 50
  assert l2[both].mean() < _l2(bim_adv, lab.test_x)[both].mean(), e


def test_carlini_high_confidence_margin(lab):
  n = CW_SMALL
  targets = lab.cw_target[:n]
  adv = lab.cw_hc.attack(lab.test_x[:n], _onehot(targets))
  success = lab.cw_hc.last_success
  assert success.mean() >= 0.5, success.mean()
  z = lab.sess.run(lab.ce_logits, {lab.x: adv})[success]
  t = targets[success]
  z_target = z[np.arange(len(t)), t]
  z_other = np.where(_onehot(t) > 0, -np.inf, z).max(1)
  assert np.all(z_target - z_other >= HIGHCON - 1e-3)


def test_carlini_extra_loss_success_needs_f2_nonpositive(lab):
  n = CW_SMALL
  images, targets = lab.test_x[:n], _onehot(lab.cw_target[:n])
  f2_clean = lab.sess.run(lab.toy_f2, {lab.x: images, lab.y_target: targets})
  assert np.all(f2_clean > 0)  # the term is active at the start
  adv = lab.cw_extra.attack(images, targets)
  success = lab.cw_extra.last_success
  assert success.mean() >= 0.3, success.mean()
  f2 = lab.sess.run(lab.toy_f2, {lab.x: adv, lab.y_target: targets})
  assert np.all(f2[success] <= 1e-4)
  z = lab.sess.run(lab.ce_logits, {lab.x: adv})
  np.testing.assert_array_equal(z.argmax(1)[success], lab.cw_target[:n][success])
  # The original's fallback: an example that never succeeds comes back as its lowest-f2 image
  # that reaches the target, if any; else unchanged.
  fallback = lab.cw_extra.last_fallback
  assert not (fallback & success).any()
  np.testing.assert_array_equal(z.argmax(1)[fallback], lab.cw_target[:n][fallback])
  assert np.all(f2[fallback] > 0)
  neither = ~success & ~fallback
  np.testing.assert_array_equal(adv[neither], images[neither])


def test_carlini_chunks_and_pads_like_separate_calls(lab):
  images, targets = lab.test_x[:6], _onehot(lab.cw_target[:6])
  whole = lab.cw_tiny.attack(images, targets)  # chunks of 4 and 2 (padded to 4)
  success, l2 = lab.cw_tiny.last_success, lab.cw_tiny.last_l2
  assert whole.shape == images.shape and success.shape == l2.shape == (6,)
  np.testing.assert_array_equal(whole[:4], lab.cw_tiny.attack(images[:4], targets[:4]))
  np.testing.assert_array_equal(whole[4:], lab.cw_tiny.attack(images[4:], targets[4:]))
  np.testing.assert_array_equal(success[4:], lab.cw_tiny.last_success)
  np.testing.assert_array_equal(whole[~success], images[~success])


def test_carlini_rejects_bad_shapes(lab):
  with pytest.raises(ValueError):
    lab.cw.attack(np.zeros((3, 32, 32, 3), np.float32), np.zeros((3, 10), np.float32))
  with pytest.raises(ValueError):
    lab.cw.attack(np.zeros((3, 28, 28, 1), np.float32), np.zeros((2, 10), np.float32))


# ---- graph built once; registry -----------------------------------------------------------


def test_graph_size_does_not_depend_on_eps(lab):
  before = len(lab.graph.get_operations())
  for e in (0.02, 0.1, 0.2):
    for name in ('random', 'fgsm', 'bim', 'tgsm'):
      lab.run(lab.ops[name], lab.test_x[:8], e)
  lab.run(lab.ops['jsma'], lab.test_x[:4], 0.5)
  assert len(lab.graph.get_operations()) == before
  assert lab.graph.finalized


def test_carlini_results_do_not_depend_on_the_batch(lab):
  """Abort early is per example: each example's result at batch 10 is its batch-1 result."""
  x, target = lab.test_x[:10], np.eye(10, dtype=np.float32)[lab.cw_target[:10]]
  adv1 = lab.cw_b1.attack(x, target)
  success1, l2_1 = lab.cw_b1.last_success.copy(), lab.cw_b1.last_l2.copy()
  adv10 = lab.cw_b10.attack(x, target)
  np.testing.assert_array_equal(success1, lab.cw_b10.last_success)
  np.testing.assert_allclose(adv10, adv1, atol=1e-3)  # batched convolutions round apart
  np.testing.assert_allclose(lab.cw_b10.last_l2, l2_1, rtol=1e-3)
  assert success1.any()


def test_cw_wb_second_run_starts_from_the_first_runs_image(lab):
  """Where the first run already succeeded (logit margin >= 5) and the detector term holds,
  the second run keeps that image: its L2 penalty is measured from it. Success is judged on
  the logits: a softmax margin of 5 could never hold."""
  x = lab.test_x[:CW_SMALL]
  target = np.eye(10, dtype=np.float32)[lab.cw_target[:CW_SMALL]]
  stage1 = lab.cw_stage1.attack(x, target)
  first = lab.cw_stage1.last_success.copy()
  assert first.sum() >= CW_SMALL // 2, first
  stage2 = lab.cw_stage2.attack(stage1, target)
  assert lab.cw_stage2.last_success[first].all()
  np.testing.assert_allclose(stage2[first], stage1[first], atol=1e-5)
  logits = lab.sess.run(lab.ce_logits, {lab.x: stage2[first]})
  z_target = logits[np.arange(len(logits)), lab.cw_target[:CW_SMALL][first]]
  z_other = np.where(target[first] > 0, -np.inf, logits).max(axis=1)
  assert np.all(z_target - z_other >= 5.0 - 1e-3)


def test_ilcm_original_target_vector_and_its_gradient():
  y = np.eye(10, dtype=np.float32)[[3, 7]]
  with tf.Graph().as_default(), tf1.Session() as sess:
    original = sess.run(attacks.gradient.ilcm_target_vector(tf.constant(y), 'original'))
    onehot = sess.run(attacks.gradient.ilcm_target_vector(tf.constant(y), 'onehot'))
    z = np.random.RandomState(0).normal(size=(2, 10)).astype(np.float32)
    logits = tf.constant(z)
    loss = tf.reduce_sum(tf.nn.softmax_cross_entropy_with_logits(labels=original,
                                                                 logits=logits))
    grad = sess.run(tf.gradients(loss, logits)[0])
  np.testing.assert_array_equal(original, np.where(y > 0, 0.5, -0.5))
  np.testing.assert_array_equal(onehot, y)
  # TensorFlow's fused softmax cross-entropy backpropagates softmax(z) - t (it assumes the
  # labels sum to 1), and the original ran that op: so each ILCM step descends along p - t.
  # The loss's true derivative, p * sum_j t_j - t = -4 p - t for ten classes, is not it.
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  np.testing.assert_allclose(grad, p - original, atol=1e-6)
  np.testing.assert_allclose(original.sum(1), -4.0)
  assert np.abs(grad - (p * original.sum(1, keepdims=True) - original)).max() > 1.0
  with pytest.raises(ValueError, match='onehot'):
    attacks.gradient.ilcm_target_vector(y, 'textbook')


def test_ilcm_original_and_onehot_targets_give_different_images(lab):
  x = lab.test_x[:50]
  original = lab.run(lab.ops['tgsm'], x, 0.1)
  onehot = lab.run(lab.ilcm_onehot, x, 0.1)
  assert np.mean(np.any(original != onehot, axis=(1, 2, 3))) > 0.5
  for adv in (original, onehot):
    assert np.abs(adv - x).max() <= 0.1 + 1e-6


def test_table3_statistics_over_the_stated_subset():
  rng = np.random.RandomState(3)
  images = rng.uniform(-0.5, 0.5, (40, 4, 4, 1))
  adv = np.clip(images + rng.normal(scale=0.1, size=images.shape), -0.5, 0.5)
  clean_correct, reached = rng.rand(40) < 0.8, rng.rand(40) < 0.6
  f2 = rng.normal(size=40)
  stats = attack_runner.wb_stats(images, adv, clean_correct, reached, f2)
  counted = clean_correct & reached
  rms = [np.sqrt(np.mean((images[i] - adv[i]) ** 2)) for i in np.flatnonzero(counted)]
  l2 = [np.linalg.norm((images[i] - adv[i]).ravel()) for i in np.flatnonzero(counted)]
  assert stats['table3_examples'] == counted.sum()
  assert stats['rms_distortion'] == pytest.approx(np.mean(rms))
  assert stats['mean_l2_distortion'] == pytest.approx(np.mean(l2))
  assert stats['ratio_f2_positive'] == pytest.approx(np.mean(f2[counted] > 0))
  none = attack_runner.wb_stats(images, adv, clean_correct, np.zeros(40, bool), f2)
  assert none == {'table3_examples': 0, 'ratio_f2_positive': None, 'rms_distortion': None,
                  'mean_l2_distortion': None}


def test_registry():
  assert attacks.ATTACK_NAMES == ('random', 'fgsm', 'bim', 'tgsm', 'jsma', 'carliniL2',
                                  'carliniL2_defaults', 'carliniL2_highcon',
                                  'carliniL2_specific') + ADAPTIVE
  for name in ('random', 'fgsm', 'bim', 'tgsm', 'jsma'):
    spec = attacks.get_attack(name)
    assert spec.info.swept and spec.info.cw_stages == () and callable(spec.build)
  # The original's settings (its test_adv.py): (batch, iterations, search steps, c, kappa).
  stages = {name: [(s.batch_size, s.max_iterations, s.binary_search_steps, s.initial_const,
                    s.confidence, s.learning_rate)
                   for s in attacks.get_attack(name).info.cw_stages]
            for name in ('carliniL2', 'carliniL2_defaults', 'carliniL2_highcon',
                         'carliniL2_specific')}
  assert stages == {
      'carliniL2': [(10, 10, 9, 1.0, 0.0, 0.01)],
      'carliniL2_defaults': [(1, 10000, 9, 1e-3, 0.0, 0.01)],  # Carlini's l2_attack.py
      'carliniL2_highcon': [(10, 10000, 9, 1.0, 10.0, 0.01)],
      'carliniL2_specific': [(1, 5000, 3, 10.0, 5.0, 0.01), (1, 10000, 9, 100.0, 5.0, 0.01)]}
  assert not any(attacks.get_attack(n).info.swept or attacks.get_attack(n).build
                 for n in stages)
  assert [n for n in attacks.ATTACK_NAMES if attacks.get_attack(n).info.white_box] == [
      'carliniL2_specific']
  titles = [attack_names.title(n) for n in attacks.ATTACK_NAMES if n not in ADAPTIVE]
  assert titles == ['Random', 'FGSM', 'BIM', 'ILCM', 'JSMA', 'C&W', "C&W (Carlini's defaults)",
                    'C&W-hc', 'C&W-wb']
  assert attack_names.paper_attacks() == ['fgsm', 'bim', 'tgsm', 'jsma', 'carliniL2',
                                          'carliniL2_highcon']
  assert attack_names.paper_attacks(full=True) == ['fgsm', 'bim', 'tgsm', 'jsma', 'carliniL2',
                                                   'carliniL2_defaults', 'carliniL2_highcon']
  assert [n for n in attacks.ATTACK_NAMES if attack_names.info(n).l0_noise] == ['jsma']
  assert attack_names.paper_attacks(white_box=True) == ['carliniL2_specific']
  assert attack_names.ordered(['zzz', 'carliniL2', 'fgsm']) == ['fgsm', 'carliniL2', 'zzz']


def test_registry_of_the_adaptive_attacks():
  """Table 6's attacks: no graph builder of their own (rce.attacking.adaptive_runner runs
  attacks/adaptive.py), never a paper row, their column, loss and run folder names."""
  assert attack_names.adaptive_attacks() == list(ADAPTIVE)
  assert attack_names.adaptive_attacks(detector_aware=False) == ['pgd_ce', 'pgd_cw', 'pgd_hc']
  info = {n: attack_names.info(n) for n in ADAPTIVE}
  assert [(i.adaptive, i.pgd_loss) for i in info.values()] == [
      ('oblivious', 'ce'), ('oblivious', 'cw'), ('oblivious', 'hc'), ('lagrangian', 'cw'),
      ('selective', 'cw'), ('orthogonal', 'cw')]
  assert not any(i.in_paper or i.white_box or attacks.get_attack(n).build
                 for n, i in info.items())
  assert [n for n in attacks.ATTACK_NAMES if attack_names.info(n).adaptive] == list(ADAPTIVE)
  assert attack_names.adaptive_run('pgd_cw', 'lid') == 'pgd_cw'  # oblivious: no detector
  assert attack_names.adaptive_run('pgd_orthogonal', 'lid', True) == 'pgd_orthogonal_lid_targeted'
  with pytest.raises(ValueError, match='not an adaptive attack'):
    attack_names.adaptive_run('fgsm')
  assert adaptive.HIGH_CONFIDENCE == attack_names.info('carliniL2_highcon').cw_stages[0].confidence


def test_swept_build_passes_each_attack_its_own_parameters():
  calls = []
  record = lambda *args, **kwargs: calls.append((args, kwargs)) or 'x_adv'
  params = attack_runner.AttackParams(batch_size=4, nb_iter=3, jsma_max_iter=5,
                                      tgsm_target='onehot', cw_overrides={}, seed=7)
  build = attacks._eps_attack(record, nb_iter='nb_iter', target='tgsm_target')  # pylint: disable=protected-access
  assert build('logits_fn', 'x', 'eps', params) == 'x_adv'
  attacks._eps_attack(record, uses_model=False, seed='seed')('logits_fn', 'x', 'eps', params)  # pylint: disable=protected-access
  assert calls == [(('logits_fn', 'x', 'eps'), {'nb_iter': 3, 'target': 'onehot'}),
                   (('x', 'eps'), {'seed': 7})]


def test_get_attack_unknown_name_lists_names_and_builds_nothing():
  graph = tf.Graph()
  with graph.as_default():
    with pytest.raises(ValueError) as err:
      attacks.get_attack('deepfool')
  assert len(graph.get_operations()) == 0
  message = str(err.value)
  assert 'deepfool' in message
  for name in attacks.ATTACK_NAMES:
    assert name in message


# ---- C&W batch sized for the device -------------------------------------------------------


def test_cw_batch_sizes_all_images_on_a_gpu_then_halved_to_one():
  assert attack_runner.cw_batch_sizes(1000, None, gpus=1) == [1000, 500, 250, 125, 63, 32, 16,
                                                               8, 4, 2, 1]
  assert attack_runner.cw_batch_sizes(1, None, gpus=2) == [1]
  assert attack_runner.cw_batch_sizes(1000, None, gpus=0) == [None]  # CPU: the attack's own
  assert attack_runner.cw_batch_sizes(1000, 7, gpus=1) == [7]  # --cw_batch_size wins


def test_batch_fallback_retries_smaller_on_out_of_memory_only(caplog):
  tried = []

  def attempt(size):
    tried.append(size)
    if size > 100:
      raise tf.errors.ResourceExhaustedError(None, None, 'OOM when allocating tensor\nmore')
    return 'ran at %d' % size

  sizes = attack_runner.cw_batch_sizes(1000, None, gpus=1)
  with caplog.at_level('WARNING'):
    assert attack_runner.with_batch_fallback(attempt, sizes) == 'ran at 63'
  assert tried == [1000, 500, 250, 125, 63]
  assert 'C&W at batch 125 ran out of device memory (OOM when allocating tensor)' in caplog.text
  with pytest.raises(tf.errors.ResourceExhaustedError):  # nothing smaller left to try
    attack_runner.with_batch_fallback(attempt, [1000])

  def broken(size):
    raise ValueError('not a memory problem')

  with pytest.raises(ValueError, match='not a memory'):  # other errors are not retried
    attack_runner.with_batch_fallback(broken, sizes)
