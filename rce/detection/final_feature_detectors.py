"""The detectors of the final 64-d feature as small objects (numpy, no TensorFlow).

One object per detector: the K-density of Pang et al. (detection.KernelDensity), Lee et al.'s
Mahalanobis score and Ma et al.'s LID (characteristics.py), each with a numpy `score` and the
`params` its differentiable TensorFlow twin (detector_graphs.score_graph) is built from, so
both sides use the same numbers. A score here is oriented higher = more suspicious, for every
detector (the opposite of detection.py's K-density, the same as characteristics.py).
"""
import numpy as np

from rce.detection import characteristics
from rce.detection import detection
from rce.tables import attack_names
from rce.tables import errors

DETECTOR_NAMES = attack_names.ADAPTIVE_DETECTORS
# The layer whose Mahalanobis statistics the final-feature detector reads from the kernel.
FEATURE_LAYER = 'feature'


class KDensityDetector(object):
  """Minus the log K-density of a feature under the kernel points of its class."""

  name = 'k_density'
  title = 'K-density'

  def __init__(self, points, point_labels, sigma2):
    """`points` [M, D] float, `point_labels` [M] int, `sigma2` the kernel bandwidth."""
    self.points = np.asarray(points, np.float64)
    self.point_labels = np.asarray(point_labels, np.int64).reshape(-1)
    self.sigma2 = float(sigma2)
    self._kd = detection.KernelDensity(self.sigma2).fit(self.points, self.point_labels)

  def score(self, features, classes):
    """[N, D] features, [N] int classes (predicted or target) -> [N] float64."""
    return -self._kd.log_score(features, classes)

  def params(self):
    """The kernel points [M, D], their labels [M] and sigma2, for the score graph."""
    return {'points': self.points, 'point_labels': self.point_labels,
            'sigma2': np.float64(self.sigma2)}


class MahalanobisDetector(object):
  """Minus Lee et al.'s score: min over classes of 0.5 (f - mu_c)^T P (f - mu_c)."""

  name = 'mahalanobis'
  title = 'Mahalanobis'

  def __init__(self, means, precision):
    """`means` [K, D] class means, `precision` [D, D] shared precision."""
    self.means = np.asarray(means, np.float64)
    self.precision = np.asarray(precision, np.float64)

  def score(self, features, classes=None):
    """[N, D] features -> [N] float64; `classes` is ignored (the closest class counts)."""
    del classes
    return -characteristics.mahalanobis_scores(features, self.means, self.precision)[0]

  def params(self):
    """The class means [K, D] and the precision [D, D], for the score graph."""
    return {'means': self.means, 'precision': self.precision}


class LIDDetector(object):
  """LID of a feature among its k nearest rows of a fixed reference set of normal features."""

  name = 'lid'
  title = 'LID'

  def __init__(self, reference, k):
    """`reference` [R, D] normal features (no row is left out), `k` neighbours, R >= k."""
    self.reference = np.asarray(reference, np.float64)
    if int(k) != k or not 1 <= k <= len(self.reference):
      raise ValueError('LID needs 1 <= k <= %d reference rows, got k=%r'
                       % (len(self.reference), k))
    self.k = int(k)

  def score(self, features, classes=None):
    """[N, D] features -> [N] float64; `classes` is ignored."""
    del classes
    return characteristics.lid_mle(features, self.reference, self.k)

  def params(self):
    """The reference rows [R, D] and k, for the score graph."""
    return {'reference': self.reference, 'k': np.int64(self.k)}


def _require(kernel, keys, what):
  """ResultsError naming the keys of `keys` that `kernel` lacks, needed for `what`."""
  missing = [k for k in keys if k not in kernel]
  if missing:
    raise errors.ResultsError(
        'the kernel holds no %s (missing %s): it was made by an older version or is not a '
        'kernel_*.npz; rerun test_adv.py --mode=kernel_para for this model'
        % (what, ', '.join(repr(k) for k in missing)))


def from_kernel(name, kernel, lid_k=20, lid_reference=100, seed=0):
  """The detector `name` from a kernel npz (dict-like) of test_adv.py --mode=kernel_para.

  Args:
    name: one of DETECTOR_NAMES.
    kernel: mapping with 'points' [M, D], 'point_labels' [M], 'sigma2', and the feature
      layer's Mahalanobis statistics (characteristics.stats_key('means' / 'precision',
      'feature')).
    lid_k: LID neighbours.
    lid_reference: rows of 'points' drawn (seeded, without replacement) as LID's reference.
    seed: seed of that draw; the same seed gives the same reference.

  Returns:
    A KDensityDetector (all the kernel points, 'sigma2'), MahalanobisDetector or LIDDetector.

  Raises:
    ValueError: unknown name, bad LID sizes; ResultsError (a ValueError) naming a missing key.
  """
  if name == 'k_density':
    _require(kernel, ('points', 'point_labels', 'sigma2'), 'K-density kernel points')
    return KDensityDetector(kernel['points'], kernel['point_labels'], float(kernel['sigma2']))
  if name == 'mahalanobis':
    keys = [characteristics.stats_key(kind, FEATURE_LAYER) for kind in ('means', 'precision')]
    _require(kernel, keys, 'Mahalanobis statistics of the %r layer' % FEATURE_LAYER)
    return MahalanobisDetector(*(kernel[k] for k in keys))
  if name == 'lid':
    _require(kernel, ('points',), 'kernel points (the LID reference is drawn from them)')
    if lid_reference <= lid_k:
      raise ValueError('lid_reference (%d) must exceed lid_k (%d)' % (lid_reference, lid_k))
    points = np.asarray(kernel['points'])
    if len(points) < lid_reference:
      raise ValueError('the kernel has %d points, fewer than lid_reference=%d'
                       % (len(points), lid_reference))
    rows = np.random.RandomState(seed).permutation(len(points))[:lid_reference]
    return LIDDetector(points[rows], lid_k)
  raise ValueError('unknown detector %r; valid: %s'
                   % (name, ', '.join(repr(n) for n in DETECTOR_NAMES)))
