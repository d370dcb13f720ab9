"""The supervised detectors of Table 4 as small objects, for Table 6's adaptive attacks (numpy).

Each is the logistic regression --mode=detect fits on one attack's characteristics
(detect_characteristics.supervised; the attack is dchar.SEEN_ATTACK, the detector Table 5
deploys against unseen attacks), held as its numbers: the MinMax scaling (LID) and the
regression's coefficients, plus what its characteristics are computed from:
  * supervised K-density: the log K-density of the final feature under a class (one value);
  * supervised LID: every layer's LID among the k nearest rows of a fixed reference
    minibatch of normal images (the first minibatch of Table 4's protocol);
  * supervised Mahalanobis: every layer's pooled Mahalanobis score at Lee et al.'s chosen
    pre-processing eps.
`score(characteristics)` is the fitted pipeline's decision function (higher = more
suspicious, as final_feature_detectors); the characteristics come from the model
(supervised_scoring.py, TensorFlow), and the differentiable twin from the same numbers
(supervised_graphs.py). `arrays()` / `from_arrays()` keep a detector in a pickle-free npz.
"""
import numpy as np

from rce.detection import detect_characteristics as dchar
from rce.tables import attack_names

# Table 6's names of the supervised detectors, by the Table 4 detector they are.
NAMES = dict(zip(dchar.DETECTORS, attack_names.SUPERVISED_DETECTORS))
DETECTOR_NAMES = attack_names.SUPERVISED_DETECTORS
TRAINED_ON = dchar.SEEN_ATTACK


def _linear_parts(model, width):
  """(scale [F], offset [F], coef [F], intercept) of a fitted Pipeline (MinMaxScaler?, then
  LogisticRegressionCV): decision = ((x * scale + offset) @ coef) + intercept."""
  steps = dict(model.named_steps)
  if set(steps) - {'min_max', 'logistic'}:
    raise ValueError('unexpected pipeline steps %s' % sorted(steps))
  scale, offset = np.ones(width), np.zeros(width)
  if 'min_max' in steps:
    scale = np.asarray(steps['min_max'].scale_, np.float64)
    offset = np.asarray(steps['min_max'].min_, np.float64)
  logistic = steps['logistic']
  coef = np.asarray(logistic.coef_, np.float64).reshape(-1)
  if coef.size != width or np.size(logistic.intercept_) != 1:
    raise ValueError('the regression has %d coefficients for %d characteristics'
                     % (coef.size, width))
  return scale, offset, coef, float(np.asarray(logistic.intercept_).reshape(-1)[0])


class SupervisedDetector(object):
  """A fitted logistic-regression detector over per-layer characteristics.

  Attributes:
    kind: 'k_density', 'lid' or 'mahalanobis' (the Table 4 detector); name, title.
    layers: the layer names of the characteristics, in their column order.
    scale, offset, coef: [F] float64; intercept: float.
    eps: Mahalanobis' pre-processing eps (0 for the others).
    lid_k: LID's neighbours (0 for the others).
    reference_images: [R, H, W, C] float32, LID's reference minibatch (None for the others).
  """

  def __init__(self, kind, layers, scale, offset, coef, intercept, eps=0.0, lid_k=0,
               reference_images=None):
    if kind not in NAMES:
      raise ValueError('unknown supervised detector %r; valid: %s' % (kind, ', '.join(NAMES)))
    self.kind, self.name = kind, NAMES[kind]
    self.title = '%s (supervised)' % dchar.DETECTOR_NAMES[kind]
    self.layers = [str(n) for n in layers]
    self.scale, self.offset, self.coef = (np.asarray(a, np.float64).reshape(-1)
                                          for a in (scale, offset, coef))
    if not self.scale.size == self.offset.size == self.coef.size == len(self.layers):
      raise ValueError('%s: %d layers but %d / %d / %d scale, offset and coefficients'
                       % (self.name, len(self.layers), self.scale.size, self.offset.size,
                          self.coef.size))
    self.intercept = float(intercept)
    self.eps = float(eps)
    self.lid_k = int(lid_k)
    self.reference_images = (None if reference_images is None
                             else np.asarray(reference_images, np.float32))
    if kind == 'lid' and (self.reference_images is None or
                          not 1 <= self.lid_k <= len(self.reference_images)):
      raise ValueError('supervised LID needs reference images and 1 <= k <= their number')

  def score(self, chars):
    """[N, F] characteristics (columns in `layers` order) -> [N] float64 decision values."""
    chars = np.asarray(chars, np.float64).reshape(len(chars), -1)
    if chars.shape[1] != self.coef.size:
      raise ValueError('%s takes %d characteristics per example, got %d'
                       % (self.name, self.coef.size, chars.shape[1]))
    return (chars * self.scale + self.offset) @ self.coef + self.intercept

  def arrays(self):
    """{key: array} of the detector, keys prefixed with its name (for one shared npz)."""
    out = {'layers': np.array(self.layers), 'scale': self.scale, 'offset': self.offset,
           'coef': self.coef, 'intercept': np.float64(self.intercept),
           'eps': np.float64(self.eps), 'lid_k': np.int64(self.lid_k)}
    if self.reference_images is not None:
      out['reference_images'] = self.reference_images
    return {'%s_%s' % (self.name, k): v for k, v in out.items()}


def from_fit(kind, fitted, layers, eps=0.0, lid_k=0, reference_images=None):
  """The detector of a detect_characteristics.supervised result `fitted` (its 'model')."""
  if fitted.get('model') is None:
    raise ValueError('the %s detector was not fitted: %s' % (kind, fitted.get('reason')))
  parts = _linear_parts(fitted['model'], len(layers))
  return SupervisedDetector(kind, layers, *parts, eps=eps, lid_k=lid_k,
                            reference_images=reference_images)


def from_arrays(arrays, kinds=None):
  """{name: SupervisedDetector} of the detectors held in `arrays` (see `arrays()`)."""
  out = {}
  for kind in kinds or dchar.DETECTORS:
    prefix = NAMES[kind] + '_'
    if prefix + 'coef' not in arrays:
      continue
    get = lambda key, p=prefix: arrays[p + key]
    out[NAMES[kind]] = SupervisedDetector(
        kind, list(get('layers')), get('scale'), get('offset'), get('coef'),
        float(get('intercept')), float(get('eps')), int(get('lid_k')),
        arrays[prefix + 'reference_images'] if prefix + 'reference_images' in arrays
        else None)
  return out

