"""Tests of detector_graphs.py against the numpy detectors of final_feature_detectors.py.

Seeded synthetic features, no model trained: every score graph equals the numpy score, and
its gradient equals central finite differences of the float64 numpy score, both on the feature
and through a tiny model feature = tanh(x W). Each test builds its own tf.Graph and session,
so it runs whether the rest of the suite left TensorFlow in graph or in eager mode.
"""
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from rce.detection import characteristics
from rce.detection import characteristics_runner
from rce.detection import detection
from rce.detection import detector_graphs
from rce.detection import final_feature_detectors as ffd
from tests.helpers import REPO_ROOT

tf1 = tf.compat.v1

SIGMA2 = detection.sigma2_for(rce=True)
STEP = 1e-4  # central-difference step on the float64 numpy scores
GRAD_RTOL = 1e-3
_CONFIG = tf1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)

# (dim, classes, points per class, centre scale, spread, LID reference rows, LID k): a small
# case, and one at the scale of the real feature (64-d, 10 classes, 100 points per class).
SCALES = {'small': (8, 3, 30, 2.0, 0.5, 60, 10),
          'realistic': (64, 10, 100, 1.0, 1.0, 100, 20)}


def _clusters(rng, dim, num_classes, per_class, centre_scale, spread):
  """(points [M, dim] float32, labels [M] int64, centres [K, dim]): Gaussian class clusters."""
  centres = centre_scale * rng.randn(num_classes, dim)
  labels = np.repeat(np.arange(num_classes), per_class).astype(np.int64)
  points = centres[labels] + spread * rng.randn(labels.size, dim)
  return points.astype(np.float32), labels, centres


def _kernel(points, labels, num_classes, layers=('feature',)):
  """A dict shaped like kernel_*.npz of test_adv.py --mode=kernel_para."""
  kernel = {'points': points, 'point_labels': labels, 'sigma2': np.float64(SIGMA2),
            'seed': np.int64(0)}
  for layer in layers:
    scale = 1.0 if layer == 'feature' else 2.0  # another layer's statistics differ
    means, precision = characteristics.class_statistics(scale * points, labels, num_classes)
    kernel[characteristics.stats_key('means', layer)] = means
    kernel[characteristics.stats_key('precision', layer)] = precision
  return kernel


def _case(scale, seed=0, num_queries=20):
  """(detectors {name: detector}, queries [N, D] float32, their classes [N]) of a scale."""
  dim, num_classes, per_class, centre_scale, spread, lid_reference, lid_k = SCALES[scale]
  rng = np.random.RandomState(seed)
  points, labels, _ = _clusters(rng, dim, num_classes, per_class, centre_scale, spread)
  kernel = _kernel(points, labels, num_classes)
  detectors = {name: ffd.from_kernel(name, kernel, lid_k=lid_k, lid_reference=lid_reference)
               for name in ffd.DETECTOR_NAMES}
  rows = rng.randint(0, len(points), num_queries)
  queries = (points[rows] + 0.5 * spread * rng.randn(num_queries, dim)).astype(np.float32)
  return detectors, queries, labels[rows]


def _run(detector, inputs, classes=None, weights=None, head=None):
  """(score [N], d sum(score) / d inputs [N, D_in]) of the score graph, in a graph of its own.

  Args:
    detector: a final-feature detector.
    inputs: [N, D_in] float32, the features, or the tiny model's inputs when `weights` is set.
    classes: [N] int classes fed to the graph; None for the predicted class
      argmax(feature @ head), gradient stopped, as an attack builds it.
    weights: None, or W [D_in, D] of the tiny model feature = tanh(inputs W).
    head: [D, K] logits weights, for the predicted class.
  """
  with tf.Graph().as_default():
    x = tf1.placeholder(tf.float32, [None, inputs.shape[1]])
    feature = x if weights is None else tf.tanh(tf.matmul(x, tf.constant(weights, tf.float32)))
    feed = {x: inputs}
    if classes is None:
      logits = tf.matmul(feature, tf.constant(head, tf.float32))
      cls = tf.argmax(tf.stop_gradient(logits), axis=1)
    else:
      cls = tf1.placeholder(tf.int64, [None])
      feed[cls] = classes
    score = detector_graphs.score_graph(detector, feature, cls)
    grad = tf.gradients(tf.reduce_sum(score), x)[0]
    with tf1.Session(config=_CONFIG) as sess:
      score_value, grad_value = sess.run([score, grad], feed)
  assert score_value.dtype == np.float32 and score_value.shape == (len(inputs),)
  return score_value.astype(np.float64), grad_value.astype(np.float64)


def _perturbations(x):
  """(j, x + STEP e_j, x - STEP e_j) for every input coordinate j, all rows at once."""
  for j in range(x.shape[1]):
    e = np.zeros_like(x)
    e[:, j] = STEP
    yield j, x + e, x - e


def _central_differences(fn, x):
  """[N, D] d fn(x)_i / d x_ij of a row-wise fn [N, D] -> [N], by central differences."""
  grad = np.empty_like(x)
  for j, up, down in _perturbations(x):
    grad[:, j] = (fn(up) - fn(down)) / (2 * STEP)
  return grad


def _choice(detector, features):
  """[N, ...] the discrete choices the score makes at each row; its gradient jumps where one
  changes: LID's set of k neighbours and which is the k-th, Mahalanobis's closest class."""
  if detector.name == 'lid':
    order = np.argsort(np.linalg.norm(features[:, None] - detector.reference[None], axis=-1),
                       axis=1)[:, :detector.k]
    return np.concatenate([np.sort(order[:, :-1], axis=1), order[:, -1:]], axis=1)
  if detector.name == 'mahalanobis':
    return characteristics.mahalanobis_scores(features, detector.means, detector.precision)[1]
  return np.zeros(len(features))


def _smooth_rows(detector, to_feature, x, head=None):
  """Rows where no choice of `_choice` (nor the predicted class, with `head`) changes at any
  x +- STEP e_j: there the numpy score is smooth across the step. At least half the rows."""
  def choices(inputs):
    f = to_feature(inputs)
    c = _choice(detector, f).reshape(len(f), -1)
    return c if head is None else np.concatenate([c, (f @ head).argmax(1)[:, None]], axis=1)

  base = choices(x)
  smooth = np.ones(len(x), bool)
  for _, up, down in _perturbations(x):
    smooth &= np.all(choices(up) == base, axis=1) & np.all(choices(down) == base, axis=1)
  assert smooth.sum() >= len(x) / 2, 'too few rows away from a neighbour or class switch'
  return smooth


def _assert_gradients_close(got, want):
  np.testing.assert_allclose(got, want, rtol=GRAD_RTOL, atol=GRAD_RTOL * np.abs(want).max())


# ---- Scores ------------------------------------------------------------------------------


@pytest.mark.parametrize('scale', sorted(SCALES))
@pytest.mark.parametrize('name', ffd.DETECTOR_NAMES)
def test_score_graph_equals_numpy_score(name, scale):
  detectors, queries, classes = _case(scale)
  got, grad = _run(detectors[name], queries, classes)
  want = detectors[name].score(queries, classes)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  assert np.all(np.isfinite(grad))


@pytest.mark.parametrize('scale', sorted(SCALES))
def test_k_density_graph_under_the_predicted_class(scale):
  detectors, queries, classes = _case(scale)
  kd = detectors['k_density']
  num_classes = int(kd.point_labels.max()) + 1
  head = np.random.RandomState(1).randn(queries.shape[1], num_classes)
  predicted = (queries.astype(np.float64) @ head).argmax(axis=1)
  assert np.any(predicted != classes)  # the class fed matters below
  got, _ = _run(kd, queries, head=head)
  np.testing.assert_allclose(got, kd.score(queries, predicted), rtol=1e-4, atol=1e-4)
  assert not np.allclose(got, kd.score(queries, classes), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('scale', sorted(SCALES))
def test_k_density_graph_stays_finite_where_the_density_underflows(scale):
  detectors, queries, classes = _case(scale)
  kd = detectors['k_density']
  direction = np.random.RandomState(2).randn(*queries.shape)
  direction /= np.linalg.norm(direction, axis=1, keepdims=True)
  far = (queries + 100.0 * direction).astype(np.float32)
  density = detection.KernelDensity(SIGMA2).fit(kd.points, kd.point_labels).score(far, classes)
  assert np.all(density == 0.0)  # exp underflows even in float64
  want = kd.score(far, classes)
  assert np.all(np.isfinite(want)) and want.min() > 1e4
  got, grad = _run(kd, far, classes)
  np.testing.assert_allclose(got, want, rtol=1e-4)
  x = far.astype(np.float64)
  _assert_gradients_close(grad, _central_differences(lambda f: kd.score(f, classes), x))


def test_lid_graph_on_coincident_neighbours_matches_numpy():
  rng = np.random.RandomState(3)
  k = 5
  reference = rng.randn(30, 8).astype(np.float32)
  reference[10:10 + k] = reference[10]  # k copies of one row
  queries = np.stack([reference[0], reference[10], rng.randn(8)]).astype(np.float32)
  lid = ffd.LIDDetector(reference, k)
  want = lid.score(queries)
  assert want[1] == 0.0 and 0.0 < want[0] < want[2]  # on a row: pulled towards 0; on k: 0
  got, grad = _run(lid, queries, np.zeros(3, np.int64))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  assert np.all(np.isfinite(grad)) and np.all(grad[1] == 0.0)


# ---- Gradients ---------------------------------------------------------------------------


@pytest.mark.parametrize('scale', sorted(SCALES))
@pytest.mark.parametrize('name', ffd.DETECTOR_NAMES)
def test_gradient_equals_central_differences(name, scale):
  detectors, queries, classes = _case(scale)
  detector = detectors[name]
  x = queries.astype(np.float64)
  rows = _smooth_rows(detector, lambda f: f, x)
  _, grad = _run(detector, queries, classes)
  want = _central_differences(lambda f: detector.score(f, classes), x)
  _assert_gradients_close(grad[rows], want[rows])


@pytest.mark.parametrize('name', ffd.DETECTOR_NAMES)
def test_gradient_through_a_tiny_model_equals_central_differences(name):
  """feature = tanh(x W), the K-density under the predicted class argmax(feature V)."""
  rng = np.random.RandomState(4)
  in_dim, dim, num_classes = 5, 8, 3
  weights = 0.7 * rng.randn(in_dim, dim)

  def to_feature(inputs):
    return np.tanh(inputs @ weights)

  train_x, labels, _ = _clusters(rng, in_dim, num_classes, 40, 1.5, 0.3)
  train_f = to_feature(train_x.astype(np.float64))
  head = np.stack([train_f[labels == c].mean(axis=0) for c in range(num_classes)], axis=1)
  kernel = _kernel(train_f.astype(np.float32), labels, num_classes)
  detector = ffd.from_kernel(name, kernel, lid_k=10, lid_reference=60)
  images = (train_x[rng.randint(0, len(train_x), 20)]
            + 0.3 * rng.randn(20, in_dim)).astype(np.float32)
  x = images.astype(np.float64)
  rows = _smooth_rows(detector, to_feature, x, head)
  got, grad = _run(detector, images, weights=weights, head=head)
  predicted = (to_feature(x) @ head).argmax(axis=1)
  np.testing.assert_allclose(got, detector.score(to_feature(x), predicted), rtol=1e-4,
                             atol=1e-4)
  want = _central_differences(lambda v: detector.score(to_feature(v), predicted), x)
  _assert_gradients_close(grad[rows], want[rows])


# ---- Building ----------------------------------------------------------------------------


def test_from_kernel_builds_each_detector_from_a_kernel_file(tmp_path):
  rng = np.random.RandomState(5)
  points, labels, _ = _clusters(rng, 8, 3, 30, 2.0, 0.5)
  path = str(tmp_path / 'kernel_rce.npz')
  np.savez(path, **_kernel(points, labels, 3, layers=('stage_3', 'feature')))
  queries = rng.randn(7, 8)
  classes = rng.randint(0, 3, 7)
  with np.load(path, allow_pickle=False) as kernel:
    detectors = {n: ffd.from_kernel(n, kernel, lid_k=10, lid_reference=50)
                 for n in ffd.DETECTOR_NAMES}
  assert [(d.name, d.title) for d in detectors.values()] == [
      ('k_density', 'K-density'), ('mahalanobis', 'Mahalanobis'), ('lid', 'LID')]
  np.testing.assert_array_equal(
      detectors['k_density'].score(queries, classes),
      -detection.KernelDensity(SIGMA2).fit(points, labels).log_score(queries, classes))
  means, precision = characteristics.class_statistics(points, labels, 3)  # 'feature' layer
  np.testing.assert_array_equal(detectors['mahalanobis'].score(queries, classes),
                                -characteristics.mahalanobis_scores(queries, means, precision)[0])
  reference = points[np.random.RandomState(0).permutation(len(points))[:50]]
  np.testing.assert_array_equal(detectors['lid'].reference, reference)
  np.testing.assert_array_equal(detectors['lid'].score(queries, classes),
                                characteristics.lid_mle(queries, reference, 10))
  for detector in detectors.values():
    assert all(isinstance(v, np.ndarray) or np.isscalar(v) for v in detector.params().values())


def test_from_kernel_lid_reference_draw_is_seeded():
  points, labels, _ = _clusters(np.random.RandomState(6), 4, 2, 40, 1.0, 1.0)
  kernel = {'points': points, 'point_labels': labels}

  def draw(seed):
    return ffd.from_kernel('lid', kernel, lid_k=5, lid_reference=30, seed=seed).reference

  np.testing.assert_array_equal(draw(3), draw(3))
  assert not np.array_equal(draw(3), draw(4))
  assert len(np.unique(draw(3), axis=0)) == 30  # without replacement
  assert len(ffd.from_kernel('lid', kernel, lid_k=5, lid_reference=80).reference) == 80


def test_from_kernel_errors_name_the_problem():
  points, labels, _ = _clusters(np.random.RandomState(7), 4, 2, 20, 1.0, 1.0)
  kernel = _kernel(points, labels, 2, layers=('stage_3',))
  with pytest.raises(ValueError, match="'maha_means_feature', 'maha_precision_feature'"):
    ffd.from_kernel('mahalanobis', kernel)
  with pytest.raises(ValueError, match="unknown detector 'kd'.*'k_density', 'mahalanobis'"):
    ffd.from_kernel('kd', kernel)
  with pytest.raises(ValueError, match='40 points, fewer than lid_reference=100'):
    ffd.from_kernel('lid', kernel)
  with pytest.raises(ValueError, match=r'lid_reference \(20\) must exceed lid_k \(20\)'):
    ffd.from_kernel('lid', kernel, lid_reference=20)
  with pytest.raises(ValueError, match="missing 'sigma2'"):
    ffd.from_kernel('k_density', {'points': points, 'point_labels': labels})


def test_score_graph_rejects_unknown_detectors_and_widths():
  kd = ffd.KDensityDetector(np.zeros((4, 8)), [0, 0, 1, 1], SIGMA2)
  with tf.Graph().as_default():
    feature = tf1.placeholder(tf.float32, [None, 6])
    classes = tf1.placeholder(tf.int64, [None])
    with pytest.raises(ValueError, match="no score graph for detector 'kd_typo'"):
      detector_graphs.score_graph(type('Typo', (), {'name': 'kd_typo'})(), feature, classes)
    with pytest.raises(ValueError, match='8 values per row, the feature 6'):
      detector_graphs.score_graph(kd, feature, classes)
    gap = ffd.KDensityDetector(np.zeros((4, 6)), [0, 0, 2, 2], SIGMA2)
    with pytest.raises(ValueError, match=r'class\(es\) 1 have none'):
      detector_graphs.score_graph(gap, feature, classes)


def test_numpy_detectors_import_no_tensorflow():
  code = ('import sys; import rce.detection.final_feature_detectors; '
          'bad = [m for m in ("tensorflow", "keras") if m in sys.modules]; '
          'assert not bad, bad')
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert characteristics_runner.stats_key is characteristics.stats_key
  assert characteristics.stats_key('means', 'feature') == 'maha_means_feature'
