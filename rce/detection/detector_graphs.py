"""Differentiable TensorFlow scores of the final-feature detectors (graph mode).

`score_graph(detector, feature, classes)` builds, for a detector of
final_feature_detectors.py, a [B] float32 tensor equal to its numpy `score` (higher = more
suspicious) and differentiable w.r.t. the feature, so that an attack can descend on it. The
graph is built from `detector.params()`, the same numbers the numpy score uses, as constants.
Each kind of detector has one builder in `_BUILDERS` (keyed by `detector.name`): adding a
detector is adding one function with the `@_builder(name)` decorator.
"""
import numpy as np
import tensorflow as tf

# Squared distances at most this count as 0 in LID: the sqrt's gradient stays finite.
_LID_D2_FLOOR = 1e-12
# characteristics.py's floor of the neighbour distance ratio and cap of the LID.
_LID_RATIO_FLOOR = 1e-12
_LID_CAP = 1e12

_BUILDERS = {}


def _builder(name):
  """Registers the decorated fn(params, feature, classes) -> [B] score as the graph of `name`."""
  def register(fn):
    _BUILDERS[name] = fn
    return fn
  return register


def score_graph(detector, feature, classes):
  """[B] float32 score of `detector` (numpy `score` semantics), differentiable in `feature`.

  Args:
    detector: a detector of final_feature_detectors.py (its `name` selects the builder).
    feature: [B, D] float32 tensor, the final feature.
    classes: [B] int tensor, the class each row is scored under (K-density only; the caller
      passes the predicted class with its gradient stopped, or an attack's target class).

  Returns:
    [B] float32 tensor, higher = more suspicious.

  Raises:
    ValueError: no graph for this kind of detector, or the feature width does not match.
  """
  if detector.name not in _BUILDERS:
    raise ValueError('no score graph for detector %r; graphs exist for: %s'
                     % (detector.name, ', '.join(repr(n) for n in sorted(_BUILDERS))))
  with tf.name_scope('%s_score' % detector.name):
    return build(detector.name, detector.params(), feature, classes)


def build(name, params, feature, classes):
  """The [B] score graph of the detector kind `name` from its `params()` (see score_graph)."""
  return _BUILDERS[name](params, feature, classes)


def _constant(array, width, what):
  """float32 constant of a [..., D] array, checking D against the feature's static width."""
  array = np.asarray(array, np.float32)
  if width is not None and array.shape[-1] != width:
    raise ValueError('%s have %d values per row, the feature %d' % (what, array.shape[-1], width))
  return tf.constant(array)


def _padded_by_class(points, labels):
  """([K, P, D] points of each class, zero padded; [K, P] bool mask; [K] counts).

  K is max(label) + 1 and P the largest class; every class 0..K-1 must have a point.
  """
  labels = np.asarray(labels, np.int64).reshape(-1)
  counts = np.bincount(labels)
  empty = np.flatnonzero(counts == 0)
  if labels.size == 0 or empty.size:
    raise ValueError('the K-density graph needs kernel points of every class 0..K-1; '
                     'class(es) %s have none' % ', '.join(str(c) for c in empty))
  padded = np.zeros((counts.size, counts.max(), points.shape[1]), np.float64)
  mask = np.zeros(padded.shape[:2], bool)
  for c, n in enumerate(counts):
    padded[c, :n] = points[labels == c]
    mask[c, :n] = True
  return padded, mask, counts


@_builder('k_density')
def _k_density(params, feature, classes):
  """log n_c - logsumexp_i(-||f - z_i||^2 / sigma2) over the n_c kernel points of class c.

  The squared distances are taken from the difference (|f|^2 - 2 f.z + |z|^2 loses them to
  float32 cancellation), and the log-sum-exp stays finite where the density underflows.
  Memory: the gathered points are [B, P, D] float32. A class outside [0, K) fails at run time
  on CPU (on GPU tf.gather returns zeros for it, so its score is inf).
  """
  padded, mask, counts = _padded_by_class(np.asarray(params['points'], np.float64),
                                          params['point_labels'])
  points = _constant(padded, feature.shape[-1], 'the kernel points')
  z = tf.gather(points, classes)  # [B, P, D]
  valid = tf.gather(tf.constant(mask), classes)  # [B, P]
  d2 = tf.reduce_sum(tf.square(feature[:, None, :] - z), axis=-1)
  logits = tf.where(valid, -d2 / float(params['sigma2']), tf.constant(-np.inf, tf.float32))
  log_n = tf.gather(tf.constant(np.log(counts), tf.float32), classes)
  return log_n - tf.reduce_logsumexp(logits, axis=1)


@_builder('mahalanobis')
def _mahalanobis(params, feature, classes):
  """min_c 0.5 (f - mu_c)^T P (f - mu_c), i.e. minus Lee et al.'s max; `classes` unused."""
  del classes
  means = _constant(params['means'], feature.shape[-1], 'the class means')
  precision = _constant(params['precision'], feature.shape[-1], 'the precision')
  diff = feature[:, None, :] - means[None]  # [B, K, D]
  quad = tf.reduce_sum(tf.einsum('bkd,de->bke', diff, precision) * diff, axis=-1)
  return tf.reduce_min(0.5 * quad, axis=1)


@_builder('lid')
def _lid(params, feature, classes):
  """MLE LID from the k nearest reference rows, chosen by value each call; `classes` unused.

  The squared distances come from the difference; `lid_from_squared_distances` applies the
  rules of characteristics.lid_mle.
  """
  del classes
  reference = _constant(params['reference'], feature.shape[-1], 'the LID reference rows')
  d2 = tf.reduce_sum(tf.square(feature[:, None, :] - reference[None]), axis=-1)  # [B, R]
  return lid_from_squared_distances(d2, int(params['k']))


def lid_from_squared_distances(d2, k):
  """[B] MLE LID from [B, R] squared distances to the reference rows, k nearest by value.

  The rules of characteristics.lid_mle, in the dtype of d2, except that a squared distance of
  at most 1e-12 (a distance of at most 1e-6, not only an exact 0) counts as a coincident
  neighbour: its ratio d_i / d_k is the 1e-12 floor, and a d_k that small gives LID 0. This
  keeps the sqrt's gradient finite; such neighbours contribute no gradient. All k neighbours
  at one positive distance give the same 1e12 cap, without numpy's warning.
  """
  _, near_idx = tf.math.top_k(-d2, k)  # the k nearest (sqrt keeps the order), ascending
  near_d2 = tf.gather(d2, near_idx, batch_dims=1)
  coincident = near_d2 <= _LID_D2_FLOOR
  near = tf.sqrt(tf.maximum(near_d2, _LID_D2_FLOOR))
  d_k = near[:, -1:]
  floor = tf.constant(_LID_RATIO_FLOOR, d2.dtype)
  ratio = tf.where(coincident, tf.fill(tf.shape(near), floor), tf.maximum(near / d_k, floor))
  mean_log = -tf.reduce_mean(tf.math.log(ratio), axis=1)  # >= 0
  lid = 1.0 / tf.maximum(mean_log, 1.0 / _LID_CAP)
  return tf.where(coincident[:, -1], tf.zeros_like(lid), lid)
