"""Tests of supervised_graphs.py against the fitted scikit-learn detectors (toy network, CPU).

The differentiable supervised scores are what Table 6's adaptive attacks descend on, so they
must be the detectors --mode=detect fits, not an approximation of them. A toy network (fixed
random float32 weights: a tanh convolution and a tanh dense feature, three layers read) in a
tf.Graph of its own stands in for the ResNet, so the file runs in seconds. On it the detectors
are fitted for real: the characteristics of normal, adversarial and noisy images come from the
suite's numpy path (supervised_scoring.SupervisedScorer over characteristics_runner.LayerModel:
lid_mle against a reference minibatch, mahalanobis_at after Lee et al.'s step, the log
K-density), detect_characteristics.supervised fits the logistic regression (MinMax first for
LID), supervised_detectors.from_fit holds it. Then:
  * the score graph equals the pipeline's decision_function on held-out images;
  * its gradient equals central finite differences where the score is smooth;
  * the BPDA step of the pre-processing passes the score's gradient at the moved image;
  * mis-shaped characteristics, statistics and layers are refused.
"""
import collections

import numpy as np
import pytest
import tensorflow as tf
from scipy.spatial.distance import cdist

from rce.detection import characteristics
from rce.detection import characteristics_runner
from rce.detection import detect_characteristics as dchar
from rce.detection import detector_graphs
from rce.detection import final_feature_detectors as ffd
from rce.detection import supervised_detectors
from rce.detection import supervised_graphs
from rce.detection import supervised_scoring

tf1 = tf.compat.v1

_CONFIG = tf1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)
IMAGE_SHAPE = (8, 8, 1)
CONV_CHANNELS = 4
FEATURE_DIM = 6
NUM_CLASSES = 3
LATENT_DIM = 3  # the images lie near a 3-d manifold, so LID has neighbours to tell apart
NUM_TRAIN = 300  # images of the Mahalanobis statistics and the K-density kernel
NUM_FIT = 90  # examples (x3 versions) the regressions are fitted on
NUM_QUERY = 20  # held-out examples (x3 versions) the graphs are compared on
NUM_REFERENCE = 40  # LID's reference minibatch
LID_K = 10
SIGMA2 = 0.05  # K-density bandwidth on the 6-d tanh feature
MAHALANOBIS_EPS = 0.01  # one of characteristics_runner.MAHALANOBIS_EPS
ADV_STEP = 0.15  # the "attack": a step of this size per pixel along one fixed sign pattern
PATTERN_BIAS = 1.0  # ... drawn as sign(N(bias, 1)), mostly up


class _ToyModel(object):
  """The parts of restored_model.RestoredModel that LayerModel and SupervisedScorer read
  (graph, sess, images, layers, outputs) and `layers_fn`, of a fixed random network:
  input [B, 8, 8, 1] -> conv 3x3 tanh [B, 8, 8, 4] -> dense tanh feature [B, 6] -> logits."""

  def __init__(self, seed=0):
    rng = np.random.RandomState(seed)
    flat = int(np.prod(IMAGE_SHAPE[:2])) * CONV_CHANNELS
    self._weights = [a.astype(np.float32) for a in (
        1.5 * rng.randn(3, 3, IMAGE_SHAPE[2], CONV_CHANNELS), 0.3 * rng.randn(CONV_CHANNELS),
        2.0 * rng.randn(flat, FEATURE_DIM) / np.sqrt(flat), 0.3 * rng.randn(FEATURE_DIM),
        2.0 * rng.randn(FEATURE_DIM, NUM_CLASSES))]
    self.graph = tf.Graph()
    with self.graph.as_default():
      self.images = tf1.placeholder(tf.float32, (None,) + IMAGE_SHAPE, name='images')
      self.logits, self.feature, self.layers = self.layers_fn(self.images)
    self.sess = tf1.Session(graph=self.graph, config=_CONFIG)

  def layers_fn(self, x):
    """x -> (logits [B, 3], feature [B, 6], {'input', 'conv', 'feature': output})."""
    w_conv, b_conv, w_dense, b_dense, w_head = (tf.constant(w) for w in self._weights)
    conv = tf.tanh(tf.nn.conv2d(x, w_conv, 1, 'SAME') + b_conv)
    flat = tf.reshape(conv, [tf.shape(conv)[0], int(w_dense.shape[0])])
    feature = tf.tanh(tf.matmul(flat, w_dense) + b_dense)
    layers = collections.OrderedDict([('input', x), ('conv', conv), ('feature', feature)])
    return tf.matmul(feature, w_head), feature, layers

  def outputs(self, images, batch_size=100):
    """(logits [N, 3], features [N, 6]) of numpy images, as RestoredModel.outputs."""
    out = [self.sess.run([self.logits, self.feature], {self.images: images[s:s + batch_size]})
           for s in range(0, len(images), batch_size)]
    return tuple(np.concatenate([o[i] for o in out]) for i in range(2))


def _images(rng, basis, n):
  """[n, 8, 8, 1] float32 images in [-0.5, 0.5] near the manifold spanned through `basis`."""
  z = rng.randn(n, LATENT_DIM)
  x = 0.4 * np.tanh(z @ basis) + 0.02 * rng.randn(n, basis.shape[1])
  return np.clip(x, -0.5, 0.5).reshape((n,) + IMAGE_SHAPE).astype(np.float32)


def _versions(rng, basis, pattern, n, seed):
  """{'normal', 'adv', 'noisy': [n, 8, 8, 1]}: images, the fixed-pattern "attack" of them and
  Gaussian-noise copies with the attack's mean L2 (characteristics.noisy_copies)."""
  normal = _images(rng, basis, n)
  adv = np.clip(normal + ADV_STEP * pattern, -0.5, 0.5).astype(np.float32)
  l2 = np.linalg.norm((adv - normal).reshape(n, -1), axis=1).mean()
  return {'normal': normal, 'adv': adv, 'noisy': characteristics.noisy_copies(normal, l2, seed)}


def _template(kind, layers, reference_images=None):
  """A SupervisedDetector of unit coefficients: SupervisedScorer.characteristics of it are
  the characteristics the real detector is fitted on."""
  ones = np.ones(1 if kind == 'k_density' else len(layers))
  return supervised_detectors.SupervisedDetector(
      kind, ['feature'] if kind == 'k_density' else layers, ones, 0 * ones, ones, 0.0,
      eps=MAHALANOBIS_EPS if kind == 'mahalanobis' else 0.0,
      lid_k=LID_K if kind == 'lid' else 0, reference_images=reference_images)


def _build(seed=0):
  """The toy network, its statistics, the three fitted detectors and their score graphs.

  Returns a dict: model (_ToyModel), stats {layer: (means, precision)}, scorer
  (SupervisedScorer), query {'normal', 'adv', 'noisy': held-out images}, fitted {kind:
  detect_characteristics.supervised result}, detectors {kind: SupervisedDetector}, x (the
  images placeholder of the graphs), classes (their predicted classes, gradient stopped) and
  graphs {kind: (characteristics [B, F], score [B], d sum(score) / d x)}.
  """
  rng = np.random.RandomState(seed)
  model = _ToyModel(seed)
  basis = rng.randn(LATENT_DIM, int(np.prod(IMAGE_SHAPE)))
  pattern = np.sign(rng.randn(*IMAGE_SHAPE) + PATTERN_BIAS).astype(np.float32)
  train = _images(rng, basis, NUM_TRAIN)
  logits, features = model.outputs(train)
  labels = logits.argmax(axis=1)
  assert np.all(np.bincount(labels, minlength=NUM_CLASSES) > 0)
  names = list(model.layers)
  pooled = characteristics_runner.LayerModel(model).outputs(train, pooled=True)
  stats = {n: characteristics.class_statistics(p, labels, NUM_CLASSES)
           for n, p in zip(names, pooled)}
  kd = ffd.KDensityDetector(features, labels, SIGMA2)
  scorer = supervised_scoring.SupervisedScorer(model, stats, kd)
  reference = _images(rng, basis, NUM_REFERENCE)
  fit = _versions(rng, basis, pattern, NUM_FIT, seed + 1)
  query = _versions(rng, basis, pattern, NUM_QUERY, seed + 2)
  fit_classes = {s: model.outputs(fit[s])[0].argmax(axis=1) for s in fit}
  train_ex, test_ex, _ = dchar.example_split(fit_classes['normal'], seed)
  keep = np.ones(NUM_FIT, bool)
  detectors, fitted = {}, {}
  for kind in dchar.DETECTORS:
    template = _template(kind, names, reference)
    sets = {s: scorer.characteristics(template, fit[s], fit_classes[s]) for s in fit}
    if kind == 'mahalanobis':  # [N, L, E] with one eps: detect's choice is eps_index 0
      sets = {s: c[:, :, None] for s, c in sets.items()}
    fitted[kind] = dchar.supervised(kind, sets, keep, train_ex, test_ex, seed)
    detectors[kind] = supervised_detectors.from_fit(
        kind, fitted[kind], template.layers, eps=template.eps, lid_k=template.lid_k,
        reference_images=template.reference_images)
  with model.graph.as_default():
    x = tf1.placeholder(tf.float32, (None,) + IMAGE_SHAPE, name='x')
    logits, _, layers = model.layers_fn(x)
    classes = tf.argmax(tf.stop_gradient(logits), axis=1)
    context = supervised_graphs.GraphContext(lambda z: model.layers_fn(z)[2], stats,
                                             kd.params(), scorer.reference_outputs)
    graphs = {}
    for kind, det in detectors.items():
      chars = supervised_graphs.characteristics_graph(det, context, x, layers, classes)
      score = supervised_graphs.score_graph(det, context, x, layers, classes)
      graphs[kind] = (chars, score, tf.gradients(tf.reduce_sum(score), x)[0])
  return dict(model=model, stats=stats, scorer=scorer, query=query, fitted=fitted,
              detectors=detectors, x=x, classes=classes, graphs=graphs)


@pytest.fixture(scope='module')
def toy():
  case = _build()
  yield case
  case['model'].sess.close()


def _queries(toy_case):
  """[3 * NUM_QUERY, 8, 8, 1] held-out normal, adversarial and noisy images."""
  return np.concatenate([toy_case['query'][s] for s in characteristics_runner.SETS])


def _run(toy_case, fetches, images):
  """`fetches` of the fixture's graphs on numpy `images`."""
  return toy_case['model'].sess.run(fetches, {toy_case['x']: images})


# ---- The score is the fitted detector ----------------------------------------------------

# Graph against numpy, per column: |difference| at most this share of the column's range over
# the images (float32 layers and quadratic forms in the graph, float64 after them in numpy).
RANGE_RTOL = 1e-4


def _assert_close_in_range(got, want, what):
  """Fails naming the worst row (and column) unless |got - want| <= RANGE_RTOL * range."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  share = np.abs(got - want) / np.ptp(want, axis=0)
  worst = np.unravel_index(np.argmax(share), share.shape)
  assert share.max() <= RANGE_RTOL, (
      '%s differ at row/column %s: graph %r, numpy %r (%.3g of the range)'
      % (what, worst, got[worst], want[worst], share.max()))


@pytest.mark.parametrize('kind', dchar.DETECTORS)
def test_score_graph_equals_the_fitted_decision_function(toy, kind):
  detector, fitted = toy['detectors'][kind], toy['fitted'][kind]
  chars_t, score_t, _ = toy['graphs'][kind]
  assert ('min_max' in fitted['model'].named_steps) == (kind == 'lid')  # as detect fits
  images = _queries(toy)
  graph_chars, got, graph_classes = _run(toy, [chars_t, score_t, toy['classes']], images)
  classes = toy['model'].outputs(images)[0].argmax(axis=1)
  np.testing.assert_array_equal(graph_classes, classes)
  chars = toy['scorer'].characteristics(detector, images, classes)  # the numpy path
  want = fitted['model'].decision_function(chars)
  assert got.dtype == np.float32 and got.shape == want.shape
  # A detector that learned something: its decision varies over the held-out images.
  assert fitted['auroc'] > 0.6 and np.ptp(want) > 0.1
  np.testing.assert_allclose(detector.score(chars), want, rtol=1e-12, atol=1e-12)
  _assert_close_in_range(graph_chars, chars, 'characteristics')
  _assert_close_in_range(got, want, 'decision')


# ---- Its gradient ------------------------------------------------------------------------

# Central differences of the float32 score along a random unit direction v of the pixels:
# x +- FD_STEP * v. The step keeps the float32 round-off of the difference quotient (about
# 1e-7 |score| / FD_STEP) and its truncation error both near 1e-4 of the largest derivative.
FD_STEP = 3e-3
FD_ATOL = 1e-3  # of the largest |directional derivative|
FD_MIN_CHECKED = 10  # of the 3 * NUM_QUERY images


def _choices(toy_case, kind, images):
  """[N, C] the discrete choices the score of `kind` makes at each image. The toy network is
  smooth (tanh), so the score is smooth except where one of them changes, where its gradient
  jumps or the score steps:
    * K-density: the predicted class the log K-density is taken under;
    * LID: per layer, the set of k nearest reference rows and which of them is the k-th
      (d_k divides every ratio);
    * Mahalanobis: per layer, Lee et al.'s sign pattern (the step x' - x of LayerModel's
      pre-processing, a constant of x only while the pattern holds) and the closest class
      at x and at the pre-processed x'.
  """
  scorer = toy_case['scorer']
  layer_model = scorer.layer_model
  if kind == 'k_density':
    return toy_case['model'].outputs(images)[0].argmax(axis=1)[:, None]
  out = []
  if kind == 'lid':
    references = scorer.reference_outputs(toy_case['detectors']['lid'])
    for flat, reference in zip(layer_model.outputs(images, pooled=False), references):
      order = np.argsort(cdist(np.float64(flat), np.float64(reference)), axis=1)[:, :LID_K]
      out += [np.sort(order[:, :-1], axis=1), order[:, -1:]]
    return np.concatenate(out, axis=1)
  plain = layer_model.outputs(images, pooled=True)
  moved = layer_model.preprocessed_all(images, MAHALANOBIS_EPS)
  for li, name in enumerate(layer_model.names):
    out.append((moved[li] > images).reshape(len(images), -1))
    for pooled in (plain[li], layer_model.pooled_layer(li, moved[li])):
      out.append(characteristics.mahalanobis_scores(pooled, *toy_case['stats'][name])[1][:, None])
  return np.concatenate(out, axis=1)


@pytest.mark.parametrize('kind', dchar.DETECTORS)
def test_score_gradient_equals_central_differences_where_smooth(toy, kind):
  """d score / d x . v against (score(x + h v) - score(x - h v)) / 2h, on the images where
  no choice of `_choices` differs between x - h v, x and x + h v (elsewhere the score is not
  differentiable across the step); at least FD_MIN_CHECKED images are checked."""
  _, score_t, grad_t = toy['graphs'][kind]
  images = _queries(toy)
  rng = np.random.RandomState(7)
  v = rng.randn(*images.shape)
  v = (v / np.linalg.norm(v.reshape(len(v), -1), axis=1)[:, None, None, None]).astype(
      np.float32)
  up, down = images + FD_STEP * v, images - FD_STEP * v
  base = _choices(toy, kind, images)
  smooth = (np.all(_choices(toy, kind, up) == base, axis=1)
            & np.all(_choices(toy, kind, down) == base, axis=1))
  assert smooth.sum() >= FD_MIN_CHECKED, 'only %d smooth images' % smooth.sum()
  grad = _run(toy, grad_t, images).astype(np.float64)
  assert np.all(np.isfinite(grad))
  want = ((_run(toy, score_t, up).astype(np.float64) - _run(toy, score_t, down))
          / (2 * FD_STEP))
  got = np.sum((grad * v).reshape(len(v), -1), axis=1)
  assert np.abs(got[smooth]).max() > 1e-2  # a gradient that is not ~0 everywhere
  np.testing.assert_allclose(got[smooth], want[smooth], rtol=1e-3,
                             atol=FD_ATOL * np.abs(got[smooth]).max())


# ---- Lee et al.'s pre-processing, BPDA ---------------------------------------------------


def test_bpda_gradient_is_the_score_gradient_at_the_preprocessed_image(toy):
  """x' = preprocessed(x, s(x), eps): x' is LayerModel's step of x, and tf.gradients(s(x'), x)
  at x is tf.gradients(s(z), z) at z = x' (fed as numbers), not the gradient at x."""
  model, stats, eps = toy['model'], toy['stats']['conv'], 0.05  # a large step: x' != x
  params = {'means': stats[0], 'precision': stats[1]}

  def lee_score(images):  # Lee et al.'s score of the pooled conv layer (higher = normal)
    pooled = characteristics_runner.pool_layer(model.layers_fn(images)[2]['conv'])
    return -detector_graphs.build('mahalanobis', params, pooled, None)

  with model.graph.as_default():
    x = tf1.placeholder(tf.float32, (None,) + IMAGE_SHAPE)
    z = tf1.placeholder(tf.float32, (None,) + IMAGE_SHAPE)
    score_x = lee_score(x)
    moved = supervised_graphs.preprocessed(x, score_x, np.float32(eps))
    grad_at_x = tf.gradients(tf.reduce_sum(score_x), x)[0]
    bpda = tf.gradients(tf.reduce_sum(lee_score(moved)), x)[0]
    grad_at_z = tf.gradients(tf.reduce_sum(lee_score(z)), z)[0]
  images = _queries(toy)
  moved_v, bpda_v, grad_x_v = model.sess.run([moved, bpda, grad_at_x], {x: images})
  step = np.float32(eps) * np.where(grad_x_v > 0, 1, -1).astype(np.float32)
  np.testing.assert_array_equal(moved_v, images + step)
  conv = toy['scorer'].layer_model.names.index('conv')
  np.testing.assert_array_equal(
      moved_v, toy['scorer'].layer_model.preprocessed_all(images, eps)[conv])
  grad_z_v = model.sess.run(grad_at_z, {z: moved_v})
  scale = np.abs(grad_z_v).max()
  np.testing.assert_allclose(bpda_v, grad_z_v, rtol=1e-5, atol=1e-6 * scale)
  assert not np.allclose(bpda_v, grad_x_v, rtol=1e-2, atol=1e-2 * scale)


# ---- Refusals ----------------------------------------------------------------------------


def test_mis_shaped_characteristics_statistics_and_layers_are_refused(toy):
  lid, maha = toy['detectors']['lid'], toy['detectors']['mahalanobis']
  with pytest.raises(ValueError, match='takes 3 characteristics per example, got 2'):
    lid.score(np.zeros((4, 2)))
  with pytest.raises(ValueError, match='was not fitted: one class'):
    supervised_detectors.from_fit('lid', {'model': None, 'reason': 'one class'}, ['a'])
  with pytest.raises(ValueError, match='3 coefficients for 2 characteristics'):
    supervised_detectors.from_fit('mahalanobis', toy['fitted']['mahalanobis'], ['a', 'b'])
  renamed = supervised_detectors.SupervisedDetector(
      'mahalanobis', ['input', 'stage_1', 'feature'], maha.scale, maha.offset, maha.coef,
      maha.intercept, eps=maha.eps)
  with pytest.raises(ValueError, match='fitted on the layers'):
    toy['scorer'].characteristics(renamed, _queries(toy)[:2], np.zeros(2, np.int64))
  # Statistics of another layer (6-d feature statistics for the 4-channel conv layer).
  stats = dict(toy['stats'], conv=toy['stats']['feature'])
  model = toy['model']
  with model.graph.as_default():
    x = tf1.placeholder(tf.float32, (None,) + IMAGE_SHAPE)
    logits, _, layers = model.layers_fn(x)
    context = supervised_graphs.GraphContext(lambda z: model.layers_fn(z)[2], stats, None,
                                             None)
    with pytest.raises(ValueError, match='the class means have 6 values per row, the '
                                         'feature 4'):
      supervised_graphs.score_graph(maha, context, x, layers, tf.argmax(logits, axis=1))
