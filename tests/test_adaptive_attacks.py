"""Property tests of attacks/adaptive.py on a tiny fixed dense model and a toy detector (CPU).

The model: x [B, 6, 6, 1] -> flatten -> feature = tanh(x W1) [B, 8] -> logits = feature W2
[B, 3], seeded constant weights; the toy detector scores the squared distance of the feature
to a fixed centre of the class it is asked about. One graph for the module, every attack
built once, then finalized: an attack adding an op while it runs fails the tests.
"""
import types

import numpy as np
import pytest
import tensorflow as tf

from attacks import adaptive
from rce.tables import perturbation

tf1 = tf.compat.v1
tf1.disable_eager_execution()

SHAPE = (6, 6, 1)
NUM = 50  # examples
EPS = 0.1
STEPS = 10
_RNG = np.random.RandomState(0)
W1 = (0.3 * _RNG.randn(36, 8)).astype(np.float32)
W2 = _RNG.randn(8, 3).astype(np.float32)
CENTERS = (0.3 * _RNG.randn(3, 8)).astype(np.float32)
TOL = 1e-6


def model_fn(x):
  feature = tf.tanh(tf.matmul(tf.reshape(x, [-1, 36]), tf.constant(W1)))
  return tf.matmul(feature, tf.constant(W2)), feature


def toy_score(logits, feature, classes):
  """Squared distance of the feature to the centre of `classes`: smooth, class-dependent."""
  del logits
  return tf.reduce_sum(tf.square(feature - tf.gather(tf.constant(CENTERS), classes)), 1)


def accept_all(logits, feature, classes):
  """A detector that accepts everything (score -1 <= threshold 0), independent of x."""
  del feature, classes
  return -tf.ones([tf.shape(logits)[0]])


def np_model(x):
  feature = np.tanh(x.reshape(len(x), 36) @ W1)
  return feature @ W2, feature


def np_score(x, classes):
  return ((np_model(x)[1] - CENTERS[classes]) ** 2).sum(1)


@pytest.fixture(scope='module')
def lab():
  """The graph with every op the tests run, finalized; yields a namespace."""
  rng = np.random.RandomState(1)
  # Many pixels at the range edges, so the clipping to the image range matters.
  images = np.clip(rng.uniform(-0.7, 0.7, (NUM,) + SHAPE), perturbation.IMAGE_MIN,
                   perturbation.IMAGE_MAX).astype(np.float32)
  labels = np_model(images)[0].argmax(1).astype(np.int32)  # all clean examples correct
  targets = ((labels + 1 + rng.randint(0, 2, NUM)) % 3).astype(np.int32)
  graph = tf.Graph()
  with graph.as_default():
    ns = types.SimpleNamespace(images=images, labels=labels, targets=targets, graph=graph)
    ns.x = tf1.placeholder(tf.float32, (None,) + SHAPE)
    ns.x_init = tf1.placeholder(tf.float32, (None,) + SHAPE)
    ns.y = tf1.placeholder(tf.int32, [None])
    ns.eps = tf1.placeholder(tf.float32, [])
    ns.steps = tf1.placeholder(tf.int32, [])
    ns.step_cls = tf1.placeholder(tf.float32, [])
    ns.step_det = tf1.placeholder(tf.float32, [])
    ns.threshold = tf1.placeholder(tf.float32, [])
    ns.lam = tf1.placeholder(tf.float32, [None])

    def pgd(score_fn, method, loss='ce', targeted=False):
      return adaptive.build_pgd(model_fn, score_fn, ns.x, ns.x_init, ns.y, ns.eps, ns.steps,
                                ns.step_cls, ns.step_det, method, loss, targeted,
                                ns.threshold, ns.lam)

    ns.pgd = {(m, l): pgd(toy_score, m, l) for m in adaptive.METHODS for l in adaptive.LOSSES}
    ns.pgd_targeted = {m: pgd(toy_score, m, targeted=True) for m in adaptive.METHODS}
    ns.pgd_accept_all = {m: pgd(accept_all, m) for m in ('lagrangian', 'selective')}
    ns.pgd_accept_all['oblivious'] = pgd(None, 'oblivious')
    ns.parts = {m: adaptive.pgd_direction(model_fn, toy_score, ns.x, ns.y, ns.step_cls,
                                          ns.step_det, m, 'ce', False)
                for m in adaptive.TWO_PHASE_METHODS}
    ns.g = tf1.placeholder(tf.float32, [None, 4, 3])
    ns.other = tf1.placeholder(tf.float32, [None, 4, 3])
    ns.orth = adaptive.orthogonal_direction(ns.g, ns.other)
    ns.logits = tf1.placeholder(tf.float32, [None, 3])
    ns.losses = {(l, t): adaptive.classifier_loss(ns.logits, ns.y, l, t)
                 for l in adaptive.LOSSES for t in (False, True)}
    ns.success = {t: adaptive.is_success(ns.logits, ns.y, t) for t in (False, True)}
    ns.drivers = {(m, t): adaptive.AdaptivePGD(model_fn, toy_score, SHAPE, m, targeted=t)
                  for m in adaptive.METHODS for t in (False, True)}
    graph.finalize()
  ns.sess = tf1.Session(graph=graph, config=tf1.ConfigProto(
      intra_op_parallelism_threads=2, inter_op_parallelism_threads=1))
  ns.clean_score = np_score(images, labels)
  ns.threshold_value = float(np.median(ns.clean_score))
  ns.start = (images + EPS * np.random.RandomState(2).uniform(-1, 1, images.shape)).astype(
      np.float32)

  def run(result, steps, step_cls, step_det, labels=None, lam=1.0, x_init=None, eps=EPS):
    feed = {ns.x: images, ns.x_init: ns.start if x_init is None else x_init,
            ns.y: ns.labels if labels is None else labels, ns.eps: eps, ns.steps: steps,
            ns.step_cls: step_cls, ns.step_det: step_det,
            ns.threshold: ns.threshold_value, ns.lam: np.full(NUM, lam, np.float32)}
    fetch = {k: v for k, v in result._asdict().items() if v is not None}
    return ns.sess.run(fetch, feed)

  ns.run = run
  yield ns
  ns.sess.close()


def _dot(a, b):
  return (a * b).reshape(len(a), -1).sum(1)


def _norm(a):
  return np.sqrt(_dot(a, a))


def test_constants_and_defaults():
  assert adaptive.HIGH_CONFIDENCE == 10.0
  np.testing.assert_allclose(adaptive.default_step_fractions(10), ((0.25, 0.1), (0.125, 0.05)))
  with pytest.raises(ValueError, match='unknown method'):
    adaptive.build_pgd(model_fn, toy_score, None, None, None, EPS, 1, 0.1, 0.1, 'bogus', 'ce',
                       False)
  with pytest.raises(ValueError, match='unknown loss'):
    adaptive.AdaptivePGD(model_fn, toy_score, SHAPE, 'selective', loss='bogus')


def test_classifier_loss_matches_numpy(lab):
  logits = np.array([[1.0, 2.0, 0.0], [3.0, -1.0, 1.0], [0.5, 0.4, 20.0]], np.float32)
  y = np.array([1, 1, 0], np.int32)
  log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  ce = -log_softmax[np.arange(3), y]
  own = logits[np.arange(3), y]
  other = np.where(np.eye(3, dtype=bool)[y], -np.inf, logits).max(1)
  expected = {('ce', False): -ce, ('ce', True): ce,
              ('cw', False): np.maximum(own - other, 0.0),
              ('cw', True): np.maximum(other - own, 0.0),
              ('hc', False): np.maximum(own - other, -10.0),
              ('hc', True): np.maximum(other - own, -10.0)}
  for key, want in expected.items():
    got = lab.sess.run(lab.losses[key], {lab.logits: logits, lab.y: y})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=str(key))


def test_success_definition(lab):
  logits = np.array([[1.0, 2.0, 0.0], [3.0, 0.0, 1.0]], np.float32)
  y = np.array([1, 1], np.int32)
  run = lambda t: lab.sess.run(lab.success[t], {lab.logits: logits, lab.y: y})
  np.testing.assert_array_equal(run(False), [False, True])  # left the true class
  np.testing.assert_array_equal(run(True), [True, False])  # reached the target
  # The drivers report exactly that definition on the images they return.
  for targeted, labels in ((False, lab.labels), (True, lab.targets)):
    for method in adaptive.METHODS:
      x_adv, info = lab.drivers[method, targeted].attack(
          lab.sess, lab.images, labels, EPS, restarts=1, steps=STEPS, seed=3,
          threshold=lab.threshold_value)
      predicted = np_model(x_adv)[0].argmax(1)
      want = predicted == labels if targeted else predicted != labels
      np.testing.assert_array_equal(info['success'], want, err_msg=method)
      assert 0 < want.sum(), (method, targeted)
      # The detector is asked about the target (targeted) or the predicted class.
      classes = labels if targeted else predicted
      np.testing.assert_allclose(info['score'], np_score(x_adv, classes), rtol=1e-4,
                                 atol=1e-5)


def test_orthogonal_direction_helper(lab):
  rng = np.random.RandomState(4)
  g, other = rng.randn(5, 4, 3), rng.randn(5, 4, 3)
  other[1] = 0.0  # nothing to project out: g itself
  other[2] = 3.0 * g[2]  # parallel: nothing left
  d = lab.sess.run(lab.orth, {lab.g: g, lab.other: other})
  # Float32 round-off is relative to the projected vector times the other.
  assert np.all(np.abs(_dot(d, other)) <= 1e-6 * _norm(g) * _norm(other))
  np.testing.assert_allclose(d[1], g[1], rtol=1e-6)
  np.testing.assert_allclose(d[2], 0.0, atol=1e-5)
  # Orthogonal to `other`, g's component in the plane is kept.
  np.testing.assert_allclose(_dot(d, g)[[0, 3, 4]], _dot(d, d)[[0, 3, 4]], rtol=1e-4)


def test_orthogonal_step_does_not_undo_the_other_phase(lab):
  # Half successful iterates (from an oblivious run), half clean ones: both phases at once.
  adv = lab.run(lab.pgd['oblivious', 'ce'], STEPS, EPS / 2, EPS / 4)['x_adv']
  x_t = np.concatenate([adv, lab.images])
  y = np.concatenate([lab.labels, lab.labels])
  parts = lab.sess.run(lab.parts['orthogonal']._asdict(), {
      lab.x: x_t, lab.y: y, lab.step_cls: 0.01, lab.step_det: 0.002})
  success = parts['success']
  assert 0 < success.sum() < len(success)
  d, g_c, g_d = parts['direction'], parts['grad_cls'], parts['grad_det']
  # Phase 1 (not successful): the classifier step has no component along g_d; phase 2: the
  # detector step none along g_c (before the sign).
  undone = np.where(success, _dot(d, g_c), _dot(d, g_d))
  scale = _norm(g_c) * _norm(g_d)  # float32 round-off: relative to both gradients
  assert np.all(np.abs(undone) <= 1e-5 * scale + 1e-12), np.max(np.abs(undone) / scale)
  assert np.all(_norm(d) > 0)  # not vacuous
  np.testing.assert_allclose(parts['step'], np.where(success, 0.002, 0.01), rtol=1e-6)
  # Selective: the raw gradient of each phase (one backward pass of the per-example choice;
  # orthogonal's two gradients are the reference).
  parts = lab.parts['selective']
  assert parts.grad_cls is None and parts.grad_det is None
  sel = lab.sess.run({'direction': parts.direction}, {
      lab.x: x_t, lab.y: y, lab.step_cls: 0.01, lab.step_det: 0.002})
  want = np.where(success[:, None, None, None], g_d, g_c)
  np.testing.assert_allclose(sel['direction'], want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('method', adaptive.METHODS)
def test_iterates_stay_in_ball_and_range(lab, method):
  moved = 0.0
  for loss in adaptive.LOSSES:
    for steps in (0, 1, 2, 3, STEPS):
      # Steps as long as eps, so the projection has work to do every time.
      out = lab.run(lab.pgd[method, loss], steps, EPS, EPS / 2)
      delta = np.abs(out['x_adv'] - lab.images).max()
      assert delta <= EPS + TOL, (loss, steps, delta)
      assert out['x_adv'].min() >= perturbation.IMAGE_MIN
      assert out['x_adv'].max() <= perturbation.IMAGE_MAX
      assert out['success_counts'].shape == (steps + 1,)
      moved = max(moved, delta)
  assert moved > EPS - TOL  # some iterate reached the ball's edge


def test_accept_all_detector_equals_oblivious_pgd(lab):
  """With a detector accepting everything, selective and lagrangian success is plain PGD's.

  Same start and step. Lagrangian: the hinge max(-1 - 0, 0) is 0, its gradient too, so it
  walks PGD's path and keeps its first successful iterate (equal scores: the first is kept).
  Selective: the same until the first success, then the detector gradient is 0 and
  sign(0) = 0, so it stays put. Both succeed exactly where some iterate of PGD's path does
  (PGD's own last iterate may have left it again).
  """
  step_cls, step_det = EPS / 4, EPS / 8
  path = [lab.run(lab.pgd_accept_all['oblivious'], t, step_cls, step_det)
          for t in range(STEPS + 1)]
  ever = np.any([p['success'] for p in path], axis=0)
  first = np.argmax([p['success'] for p in path], axis=0)
  first_x = np.stack([path[t]['x_adv'][i] for i, t in enumerate(first)])
  assert 0 < ever.sum() < NUM  # not vacuous
  np.testing.assert_array_equal(path[-1]['success_counts'],
                                [p['success'].sum() for p in path])
  for method in ('selective', 'lagrangian'):
    out = lab.run(lab.pgd_accept_all[method], STEPS, step_cls, step_det, lam=5.0)
    np.testing.assert_array_equal(out['success'], ever, err_msg=method)
    np.testing.assert_array_equal(out['x_adv'][ever], first_x[ever], err_msg=method)
    np.testing.assert_array_equal(out['x_adv'][~ever], path[-1]['x_adv'][~ever], err_msg=method)
    assert np.all(out['score'] == -1.0)


@pytest.mark.parametrize('method', adaptive.METHODS)
def test_batch_1_equals_batch_50(lab, method):
  driver = lab.drivers[method, False]
  kwargs = dict(restarts=2, steps=STEPS, seed=7, threshold=lab.threshold_value,
                lagrange_steps=3)
  x1, info1 = driver.attack(lab.sess, lab.images, lab.labels, EPS, batch_size=1, **kwargs)
  x50, info50 = driver.attack(lab.sess, lab.images, lab.labels, EPS, batch_size=50, **kwargs)
  np.testing.assert_allclose(x1, x50, atol=TOL)
  np.testing.assert_array_equal(info1['success'], info50['success'])
  np.testing.assert_allclose(info1['score'], info50['score'], rtol=1e-5, atol=TOL)
  np.testing.assert_array_equal(info1['restart'], info50['restart'])
  assert np.abs(x1 - lab.images).max() <= EPS + TOL


def test_restarts_keep_the_documented_result(lab):
  images, labels = lab.images, lab.labels
  kwargs = dict(steps=STEPS, seed=7, threshold=lab.threshold_value)
  # Oblivious: the first restart that succeeds is kept, never replaced.
  once_x, once = lab.drivers['oblivious', False].attack(lab.sess, images, labels, EPS,
                                                        restarts=1, **kwargs)
  twice_x, twice = lab.drivers['oblivious', False].attack(lab.sess, images, labels, EPS,
                                                          restarts=3, **kwargs)
  ok = once['success']
  np.testing.assert_array_equal(twice_x[ok], once_x[ok])
  assert np.all(twice['restart'][ok] == 0)
  assert np.all(twice['success'] >= ok)
  # Adaptive: more restarts never lose a success nor raise the kept score.
  for method in adaptive.ADAPTIVE_METHODS:
    driver = lab.drivers[method, False]
    _, one = driver.attack(lab.sess, images, labels, EPS, restarts=1, lagrange_steps=2,
                           **kwargs)
    _, three = driver.attack(lab.sess, images, labels, EPS, restarts=3, lagrange_steps=2,
                             **kwargs)
    assert np.all(three['success'] >= one['success']), method
    both = one['success']
    assert np.all(three['score'][both] <= one['score'][both] + TOL), method
  assert twice['step_fractions'] == adaptive.default_step_fractions(STEPS)
  assert set(twice) >= {'method', 'loss', 'targeted', 'steps', 'restarts', 'step_fractions',
                        'lagrange_steps', 'success', 'score', 'accepted', 'evaded'}


def test_adaptive_attacks_lower_the_toy_score(lab):
  means = {}
  for method in adaptive.METHODS:
    _, info = lab.drivers[method, False].attack(
        lab.sess, lab.images, lab.labels, EPS, restarts=2, steps=20, seed=11,
        threshold=lab.threshold_value)
    assert info['success'].sum() >= 10, method
    means[method] = info['score'][info['success']].mean()
    if method != 'oblivious':
      assert info['evaded'].sum() >= info['success'].sum() // 2, method
  for method in adaptive.ADAPTIVE_METHODS:
    assert means[method] < means['oblivious'], means


def test_eps_zero_returns_the_images(lab):
  for method in adaptive.METHODS:
    x_adv, info = lab.drivers[method, False].attack(
        lab.sess, lab.images, lab.labels, 0.0, restarts=3, steps=STEPS,
        threshold=lab.threshold_value)
    np.testing.assert_array_equal(x_adv, lab.images)
    assert not info['success'].any()  # every clean example is classified correctly
    np.testing.assert_allclose(info['score'], lab.clean_score, rtol=1e-4, atol=1e-5)


def test_update_lambda_moves_in_the_documented_direction():
  lam = np.array([1.0, 1.0, 1.0, 4.0, 4.0])
  lower = np.array([0.0, 0.0, 0.0, 1.0, 0.5])
  upper = np.array([np.inf, np.inf, np.inf, 16.0, 64.0])
  succeeded = np.array([True, False, True, True, False])
  accepted = np.array([False, False, True, False, False])
  new, lo, hi = adaptive.update_lambda(lam, lower, upper, succeeded, accepted)
  # Rejected: too small, x10 (no upper bound yet); unsuccessful: too large, /10; done: stays;
  # bracketed: geometric bisection.
  np.testing.assert_allclose(new, [10.0, 0.1, 1.0, 8.0, np.sqrt(0.5 * 4.0)])
  np.testing.assert_allclose(lo, [1.0, 0.0, 0.0, 4.0, 0.5])
  np.testing.assert_allclose(hi, [np.inf, 1.0, np.inf, 16.0, 4.0])
  np.testing.assert_array_equal(lam, [1.0, 1.0, 1.0, 4.0, 4.0])  # inputs untouched
  # A search where lam must lie in (1.5, 2): succeeds iff lam < 2, accepted iff lam > 1.5.
  for start in (0.01, 1.0, 100.0):
    lam, lower, upper = np.array([start]), np.zeros(1), np.full(1, np.inf)
    for _ in range(8):
      succeeded, accepted = lam < 2.0, lam > 1.5
      lam, lower, upper = adaptive.update_lambda(lam, lower, upper, succeeded, accepted)
      assert lower[0] <= 1.5 + TOL and upper[0] >= 2.0 - TOL  # the bounds bracket (1.5, 2)
    assert 1.5 < lam[0] < 2.0, start
