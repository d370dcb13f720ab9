"""LID and Mahalanobis characteristics and the supervised detection protocol (numpy/sklearn).

Implements the detectors of
  * Ma et al., "Characterizing Adversarial Subspaces Using Local Intrinsic Dimensionality",
    ICLR 2018 (https://arxiv.org/abs/1801.02613): minibatch LID of every layer's output, and
  * Lee et al., "A Simple Unified Framework for Detecting Out-of-Distribution Samples and
    Adversarial Attacks", NeurIPS 2018 (https://arxiv.org/abs/1807.03888): Mahalanobis score
    under class means and one shared covariance,
and the pieces of their supervised evaluation: per-example characteristic vectors of the
normal, noisy and adversarial versions of an image, a logistic regression over them, AUROC
(both papers) and the detection rate at 5 % false positives on normal inputs (Lee et al.'s
"TNR at TPR 95 %"). How the examples are split into a training and a test part is this
suite's own choice (detect_characteristics.py). Adversarial is the label-1 class throughout,
and a higher score means more adversarial (the opposite of detection.py's convention).

No TensorFlow here: the caller extracts the layer outputs.
"""
import inspect
import warnings

import numpy as np
from scipy.spatial.distance import cdist
from sklearn.covariance import EmpiricalCovariance
from sklearn.linear_model import LogisticRegressionCV
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedShuffleSplit
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler

from rce.tables import perturbation

# Queries whose distances are computed at once; bounds memory at _QUERY_CHUNK x (reference
# rows) float64 besides the inputs.
_QUERY_CHUNK = 1024
# Smallest neighbour distance ratio d_i / d_k used in the LID estimate (see `lid_mle`).
_RATIO_FLOOR = 1e-12
# Largest LID returned: the estimate of a query whose k neighbours are all equidistant.
_LID_CAP = 1e12
# Relative tolerance on the mean L2 of `noisy_copies`, and its most search steps.
_NOISE_RTOL = 1e-3
_NOISE_MAX_STEPS = 200
# Cross-validation folds of the logistic regression (fewer when a class has fewer examples).
_CV_FOLDS = 5


def _as_rows(x):
  """[N, ...] array-like -> [N, D] float64 (a 1-D array becomes [N, 1])."""
  x = np.asarray(x, np.float64)
  if x.ndim == 0:
    raise ValueError('expected an array with a leading example axis, got a scalar')
  return x.reshape(x.shape[0], int(np.prod(x.shape[1:], dtype=np.int64)))


# ---- LID (Ma et al.) ---------------------------------------------------------------------


def _check_self_index(self_index, num_queries, num_reference):
  """[Q] int64 excluded rows (-1 = none), validated; all -1 when `self_index` is None."""
  if self_index is None:
    return np.full(num_queries, -1, np.int64)
  self_index = np.asarray(self_index, np.int64).reshape(-1)
  if self_index.size != num_queries:
    raise ValueError('self_index has %d entries for %d queries'
                     % (self_index.size, num_queries))
  if self_index.size and (self_index.min() < -1 or self_index.max() >= num_reference):
    raise ValueError('self_index must lie in [-1, %d), got %d..%d'
                     % (num_reference, self_index.min(), self_index.max()))
  return self_index


def _neighbour_distances(queries, reference, self_index, k):
  """[Q, k] ascending distances to the k nearest reference rows, each query's own row
  (`self_index`, -1 for none) excluded by index, whatever its distance."""
  d = cdist(queries, reference)
  own = np.flatnonzero(self_index >= 0)
  d[own, self_index[own]] = np.inf
  return np.sort(np.partition(d, k - 1, axis=1)[:, :k], axis=1)


def _lid_from_distances(d):
  """MLE LID from [Q, k] ascending neighbour distances; degenerate cases as in `lid_mle`."""
  d_k = d[:, -1]
  lid = np.zeros(d.shape[0])
  far = d_k > 0
  ratios = np.maximum(d[far] / d_k[far, None], _RATIO_FLOOR)
  mean_log = -np.log(ratios).mean(axis=1)  # >= 0
  lid[far] = 1.0 / np.maximum(mean_log, 1.0 / _LID_CAP)
  capped = int(np.sum(mean_log < 1.0 / _LID_CAP))
  if capped:
    warnings.warn('lid_mle: %d queries have k equidistant neighbours; their LID (infinite) '
                  'is capped at %g' % (capped, _LID_CAP), RuntimeWarning)
  return lid


def lid_mle(queries, reference, k, self_index=None):
  """Maximum-likelihood LID of each query from its k nearest reference rows (Ma et al. eq. 2).

  LID(x) = -((1/k) * sum_{i=1..k} log(d_i(x) / d_k(x)))^-1, with d_1 <= ... <= d_k the
  Euclidean distances from x to its k nearest rows of `reference` (rows flattened, float64).

  Neighbours: the row named by `self_index` is left out by index: the query itself when it
  is in the reference, or the clean image an adversarial or noisy query was made from. The
  reference code of Ma et al. (`mle_batch`) drops each query's nearest row (`[:, 1:k+1]`),
  which in their setting is almost always that same row; here it is exactly that row. A
  query with no own row (-1) keeps its very nearest row among its k neighbours.

  Distances come from scipy's cdist (exact: a query's own row is at distance 0), 1024 queries
  at a time, so memory is the float64 inputs plus 1024 x R distances.

  Degenerate distances (duplicates), so that no NaN appears:
    * d_i / d_k is floored at 1e-12, so a neighbour that coincides with the query (d_i = 0)
      gives a finite, large negative log and pulls the LID towards 0;
    * d_k = 0 (all k neighbours coincide with the query) gives LID 0 (locally a point);
    * all k neighbours at the same positive distance make the MLE infinite; it is capped at
      1e12, with a RuntimeWarning.

  Args:
    queries: [Q, ...] query points.
    reference: [R, ...] reference points, the same size once flattened.
    k: number of neighbours, >= 1.
    self_index: optional [Q] int; self_index[i] is the reference row query i was made from
      (itself, or its clean image), or -1. That row is never a neighbour of query i.

  Returns:
    [Q] float64 LID estimates.

  Raises:
    ValueError: fewer than k usable reference rows for a query, bad shapes or self_index.
  """
  q, ref = _as_rows(queries), _as_rows(reference)
  if q.shape[1] != ref.shape[1]:
    raise ValueError('queries have %d values per row, reference %d' % (q.shape[1], ref.shape[1]))
  if int(k) != k or k < 1:
    raise ValueError('k must be a positive integer, got %r' % (k,))
  k = int(k)
  self_index = _check_self_index(self_index, q.shape[0], ref.shape[0])
  usable = ref.shape[0] - (self_index >= 0)
  if usable.size and usable.min() < k:
    raise ValueError('lid_mle needs k=%d neighbours but the reference has %d rows (%d once a '
                     'query itself is excluded)' % (k, ref.shape[0], usable.min()))
  out = np.empty(q.shape[0])
  for start in range(0, q.shape[0], _QUERY_CHUNK):
    rows = slice(start, start + _QUERY_CHUNK)
    out[rows] = _lid_from_distances(_neighbour_distances(q[rows], ref, self_index[rows], k))
  return out


def minibatch_bounds(n, batch_size, k):
  """[(start, stop)] consecutive chunks of `batch_size` examples covering range(n).

  A last chunk of <= k examples is merged into the previous one: its normal examples would
  have fewer than k neighbours once themselves are excluded.
  """
  if batch_size <= k:
    raise ValueError('batch_size (%d) must exceed k (%d): each normal example needs k '
                     'neighbours in its minibatch besides itself' % (batch_size, k))
  bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
  if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] <= k:
    last = bounds.pop()
    bounds[-1] = (bounds[-1][0], last[1])
  return bounds


def _check_sets(normal_layers, other_layers):
  """(N, L) of the normal layers, checking every set has L layers of N examples."""
  if not normal_layers:
    raise ValueError('normal_layers is empty')
  if 'normal' in other_layers:
    raise ValueError("other_layers must not contain the name 'normal'")
  n = len(normal_layers[0])
  for name, layers in [('normal', normal_layers)] + sorted(other_layers.items()):
    if len(layers) != len(normal_layers):
      raise ValueError('%s has %d layers, normal has %d' % (name, len(layers), len(normal_layers)))
    if any(len(a) != n for a in layers):
      raise ValueError('every layer of every set must have %d examples (%s differs)' % (n, name))
  return n, len(normal_layers)


def lid_characteristics(normal_layers, other_layers, k=20, batch_size=100):
  """Minibatch LID characteristics of Ma et al.: one LID per example and layer.

  Examples are cut into consecutive minibatches (`minibatch_bounds`: chunks of `batch_size`,
  a last chunk of <= k examples merged into the one before). In each minibatch and layer, the
  reference is the minibatch's normal examples, and query i of every set (normal,
  adversarial, noisy) leaves out reference row i, its own clean image, by index: a noisy or
  adversarial query's distance to the image it was made from is the size of the perturbation
  in that layer, not the local geometry the estimate is after.

  Args:
    normal_layers: list over layers of [N, ...] arrays (flattened per example).
    other_layers: dict name -> list over the same layers of [N, ...] arrays; example i of every
      set is the same underlying image.
    k: neighbours per estimate.
    batch_size: examples per minibatch, > k.

  Returns:
    {'normal': [N, L] float64, name: [N, L] float64 for each name of other_layers}.
  """
  n, num_layers = _check_sets(normal_layers, other_layers)
  names = ['normal'] + list(other_layers)
  out = {name: np.empty((n, num_layers)) for name in names}
  for start, stop in minibatch_bounds(n, batch_size, k):
    m = stop - start
    self_index = np.tile(np.arange(m), len(names))
    for layer, normal in enumerate(normal_layers):
      ref = _as_rows(normal[start:stop])
      queries = [ref] + [_as_rows(other_layers[name][layer][start:stop]) for name in names[1:]]
      lid = lid_mle(np.concatenate(queries), ref, k, self_index).reshape(len(names), m)
      for name, values in zip(names, lid):
        out[name][start:stop, layer] = values
  return out


# ---- Mahalanobis (Lee et al.) ------------------------------------------------------------


def stats_key(kind, layer):
  """Name of a Mahalanobis training statistic in the kernel npz ('means' / 'precision')."""
  return 'maha_%s_%s' % (kind, layer)


def class_statistics(features, labels, num_classes):
  """Class means and the precision of one covariance shared by all classes (Lee et al.).

  As Lee et al.'s `sample_estimator`: the covariance is `EmpiricalCovariance(
  assume_centered=False)` fitted on the features minus their class mean; its `precision_` is
  a pseudo-inverse, so a singular covariance (D > N - K) still gives a result.

  Args:
    features: [N, ...] training features (flattened per example to D values).
    labels: [N] int labels in [0, num_classes).
    num_classes: number of classes K; every class needs at least one example.

  Returns:
    (means [K, D] float64, precision [D, D] float64).

  Raises:
    ValueError: a class has no example, a label is out of range, or the lengths differ.
  """
  x = _as_rows(features)
  labels = np.asarray(labels).reshape(-1)
  if labels.size != x.shape[0]:
    raise ValueError('%d labels for %d features' % (labels.size, x.shape[0]))
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError('labels must lie in [0, %d), got %d..%d'
                     % (num_classes, labels.min(), labels.max()))
  empty = np.flatnonzero(np.bincount(labels, minlength=num_classes) == 0)
  if empty.size:
    raise ValueError('class_statistics: class(es) %s have no example, so no mean'
                     % ', '.join(str(c) for c in empty))
  means = np.stack([x[labels == c].mean(axis=0) for c in range(num_classes)])
  cov = EmpiricalCovariance(assume_centered=False).fit(x - means[labels])
  return means, cov.precision_


def mahalanobis_scores(features, means, precision):
  """Lee et al.'s confidence score: max_c -0.5 (x - mu_c)^T P (x - mu_c).

  Higher means closer to a class (more normal). Ties between classes go to the lowest index.

  Args:
    features: [N, ...] features (flattened to D values).
    means: [K, D] class means; precision: [D, D] shared precision (from `class_statistics`).

  Returns:
    (score [N] float64, closest class [N] int64).
  """
  x = _as_rows(features)
  p = np.asarray(precision, np.float64)
  per_class = np.empty((x.shape[0], len(means)))
  for c, mu in enumerate(np.asarray(means, np.float64)):
    diff = x - mu
    per_class[:, c] = -0.5 * np.einsum('ij,ij->i', diff @ p, diff)
  closest = per_class.argmax(axis=1)
  return per_class[np.arange(x.shape[0]), closest], closest.astype(np.int64)


# ---- Noisy copies ------------------------------------------------------------------------


def _mean_l2(images, noise, scale, clip_min, clip_max):
  """Mean over images of ||clip(image + scale * noise) - image||_2 (float64)."""
  diff = np.clip(images + scale * noise, clip_min, clip_max) - images
  return float(np.sqrt(np.square(diff.reshape(diff.shape[0], -1)).sum(axis=1)).mean())


def _noise_scale(images, noise, target, clip_min, clip_max):
  """Scale s with |mean L2 of the clipped noise - target| <= 1e-3 target, by bisection.

  The mean L2 f(s) is continuous and non-decreasing in s. Without clipping f(s) = s * f(1),
  and clipping only shrinks the noise, so s0 = target / f_unclipped(1) is a lower bound; the
  upper bound is found by doubling, then the bracket is bisected.
  """
  reach = np.where(noise > 0, clip_max - images, np.where(noise < 0, images - clip_min, 0.0))
  reachable = float(np.sqrt(np.square(reach.reshape(reach.shape[0], -1)).sum(axis=1)).mean())
  if target >= reachable:
    raise ValueError('target mean L2 %g is not reachable: clipped to [%g, %g], noise moves '
                     'these images by less than %g' % (target, clip_min, clip_max, reachable))
  tol = _NOISE_RTOL * target
  lo = hi = target / _mean_l2(images, noise, 1.0, -np.inf, np.inf)
  for _ in range(_NOISE_MAX_STEPS):
    value = _mean_l2(images, noise, hi, clip_min, clip_max)
    if value >= target - tol:
      break
    lo, hi = hi, 2.0 * hi
  scale = hi
  for _ in range(_NOISE_MAX_STEPS):
    if abs(value - target) <= tol:
      return scale
    lo, hi = (scale, hi) if value < target else (lo, scale)
    scale = 0.5 * (lo + hi)
    value = _mean_l2(images, noise, scale, clip_min, clip_max)
  raise RuntimeError('noise scale search did not converge (target %g)' % target)


def _check_range(x, clip_min, clip_max):
  if x.size and (x.min() < clip_min or x.max() > clip_max):
    raise ValueError('images must lie in [%g, %g], got %g..%g'
                     % (clip_min, clip_max, x.min(), x.max()))


def noisy_copies(images, target_mean_l2, seed, clip_min=perturbation.IMAGE_MIN,
                 clip_max=perturbation.IMAGE_MAX, match=None):
  """Gaussian-noise copies of `images` whose mean L2 distortion equals `target_mean_l2`.

  The "noisy" negatives of Ma et al.: clip(image + s * n) with n ~ N(0, 1) per pixel from
  RandomState(seed) and one global scale s for all images. (Ma et al.'s code draws the noise
  at a fixed, hand-tuned standard deviation per data set and attack; matching the adversarial
  examples' mean L2 is this suite's rule.) Clipping shrinks the noise, so s is searched
  (`_noise_scale`: doubling then bisection) until the mean of ||noisy - image||_2 over the
  images of `match`, computed in float64 before the float32 cast, is within a relative 1e-3
  of the target. Every image gets noise at that scale. A target of 0 returns the images
  unchanged.

  Args:
    images: [N, ...] float images inside [clip_min, clip_max].
    target_mean_l2: mean L2 distortion wanted, >= 0 (the kept adversarial examples').
    seed: seed of the noise; the same seed gives the same copies.
    clip_min, clip_max: pixel range.
    match: optional [N] bool, the images whose mean L2 is matched (e.g. the examples the
      attack succeeded on); None (or no True entry) matches the mean over all images.

  Returns:
    [N, ...] float32 noisy images in [clip_min, clip_max].

  Raises:
    ValueError: negative or unreachable target, images outside the range, a bad `match`.
  """
  x = np.asarray(images, np.float64)
  if target_mean_l2 < 0:
    raise ValueError('target_mean_l2 must be >= 0, got %g' % target_mean_l2)
  _check_range(x, clip_min, clip_max)
  if target_mean_l2 == 0 or x.size == 0:
    return np.array(images, np.float32)
  rows = np.arange(x.shape[0])
  if match is not None:
    match = np.asarray(match, bool).reshape(-1)
    if match.size != x.shape[0]:
      raise ValueError('match has %d entries for %d images' % (match.size, x.shape[0]))
    if match.any():
      rows = np.flatnonzero(match)
  noise = np.random.RandomState(seed).standard_normal(x.shape)
  scale = _noise_scale(x[rows], noise[rows], float(target_mean_l2), clip_min, clip_max)
  return np.clip(x + scale * noise, clip_min, clip_max).astype(np.float32)


def l0_noisy_copies(images, adversarial, seed, clip_max=perturbation.IMAGE_MAX):
  """L0-noise copies for an L0 attack (JSMA), as Feinman et al.'s and Ma et al.'s `flip`.

  Per image, as many pixels as the attack changed in it (adversarial != image), drawn at
  random among the pixels below `clip_max`, are set to `clip_max`, the top of the image range
  (Ma et al.'s CLIP_MAX). The pixels are drawn without replacement, so a copy differs from
  its image in exactly that many pixels (the reference draws with replacement, so at most
  that many); when fewer pixels lie below `clip_max`, all of them are set.

  Args:
    images: [N, ...] float clean images, at most `clip_max`.
    adversarial: [N, ...] the attack's images of them (only which pixels differ is used).
    seed: seed of RandomState drawing the pixels.
    clip_max: the value the chosen pixels take.

  Returns:
    [N, ...] float32 noisy images.
  """
  x = np.array(images, np.float64)
  adv = np.asarray(adversarial)
  if adv.shape != x.shape:
    raise ValueError('adversarial has shape %s, images %s' % (adv.shape, x.shape))
  if x.size and x.max() > clip_max:
    raise ValueError('images must be at most %g, got %g' % (clip_max, x.max()))
  flat = x.reshape(x.shape[0], -1)
  changed = (adv != x).reshape(x.shape[0], -1).sum(axis=1)
  candidate = flat < clip_max
  # A random order of each image's candidate pixels (the others last): the first `changed`
  # of them are a uniform draw without replacement.
  keys = np.where(candidate, np.random.RandomState(seed).random_sample(flat.shape), np.inf)
  rank = np.argsort(np.argsort(keys, axis=1, kind='stable'), axis=1, kind='stable')
  flat[candidate & (rank < changed[:, None])] = clip_max
  return flat.reshape(x.shape).astype(np.float32)


# ---- Metrics and the supervised protocol -------------------------------------------------


def _min_count(n, fraction):
  """Smallest integer m with m / n >= fraction (the same float test as the definition)."""
  m = int(np.ceil(fraction * n))
  while m > 1 and (m - 1) / n >= fraction:
    m -= 1
  while m / n < fraction:
    m += 1
  return m


def fpr_threshold(scores_normal, fpr=0.05):
  """The threshold that accepts at least 1 - `fpr` of the normal examples.

  Scores are oriented higher = more adversarial; a score <= t is accepted, a score > t
  flagged. t is the m-th smallest normal score, m the smallest count with m / n >= 1 - fpr,
  so that the share of normal examples flagged (the false-positive rate) is at most `fpr`
  (below it when normal scores tie at t, which are all accepted).

  Args:
    scores_normal: [n] scores of the normal (and noisy) examples, n >= 1, no NaN.
    fpr: the false-positive rate allowed, in [0, 1).

  Returns:
    t as a float.
  """
  if not 0 <= fpr < 1:
    raise ValueError('fpr must lie in [0, 1), got %r' % (fpr,))
  normal = np.asarray(scores_normal, np.float64).reshape(-1)
  if normal.size == 0 or np.isnan(normal).any():
    raise ValueError('fpr_threshold needs at least one normal score and no NaN')
  return float(np.sort(normal)[_min_count(normal.size, 1.0 - fpr) - 1])


def detected_at_fpr(scores_normal, scores_adv, fpr=0.05):
  """Share of adversarial examples flagged at the threshold that flags `fpr` of the normal.

  This is Lee et al.'s "TNR at TPR 95 %" (their calculate_log.py): their positives are the
  normal and noisy examples, the threshold accepts 95 % of them, and the TNR is the share of
  adversarial examples rejected there, i.e. the detection rate at 5 % false positives on
  normal inputs. Threshold and ties as `fpr_threshold`: a normal example scoring exactly t
  is accepted, and so is an adversarial one (a tie counts against the detector). Lee et al.
  take the sweep point whose TPR is closest to 95 %, which can lie below it; here at least
  95 % of the normal examples are accepted.

  Args:
    scores_normal: [n_normal] scores of the normal (and noisy) examples.
    scores_adv: [n_adv] scores of the adversarial examples.
    fpr: false-positive rate in [0, 1), 0.05 for Lee et al.'s quantity.

  Returns:
    The detection rate as a float, or None when either side is empty.

  Raises:
    ValueError: fpr outside [0, 1), or a NaN score.
  """
  normal = np.asarray(scores_normal, np.float64).reshape(-1)
  adv = np.asarray(scores_adv, np.float64).reshape(-1)
  if normal.size == 0 or adv.size == 0:
    return None
  if np.isnan(adv).any():
    raise ValueError('detected_at_fpr got NaN scores')
  return float(np.mean(adv > fpr_threshold(normal, fpr)))


def stratified_split(labels, test_fraction=0.2, seed=0):
  """(train_idx, test_idx), sorted int arrays: a seeded split keeping the class proportions.

  sklearn's StratifiedShuffleSplit; it raises ValueError when a class has fewer than 2 members.
  """
  labels = np.asarray(labels).reshape(-1)
  splitter = StratifiedShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed)
  train, test = next(splitter.split(np.zeros((labels.size, 1)), labels))
  return np.sort(train), np.sort(test)


def supervised_dataset(normal, adv, noisy, keep):
  """(X, y, example_index) of the protocol, over the examples where `keep` is True.

  Rows: the kept adversarial characteristics (y = 1), then the normal ones (y = 0), then the
  noisy ones (y = 0); example_index gives the example (row of the inputs) of each row.

  Args:
    normal, adv, noisy: [N, F] (or [N]) characteristic vectors of the three versions of each
      example.
    keep: [N] bool, e.g. clean image classified correctly and attack successful.

  Returns:
    (X [3M, F] float64, y [3M] int64, example_index [3M] int64), M = keep.sum().
  """
  keep = np.asarray(keep, bool).reshape(-1)
  sets = [_as_rows(a) for a in (adv, normal, noisy)]
  if any(s.shape != sets[0].shape for s in sets) or sets[0].shape[0] != keep.size:
    raise ValueError('normal, adv and noisy must have the same shape [N, F] and keep [N]; got '
                     '%s, %s, %s and %d' % (sets[1].shape, sets[0].shape, sets[2].shape, keep.size))
  idx = np.flatnonzero(keep)
  x = np.concatenate([s[idx] for s in sets])
  y = np.concatenate([np.ones(idx.size, np.int64), np.zeros(2 * idx.size, np.int64)])
  return x, y, np.tile(idx.astype(np.int64), 3)


def _unfit_reason(y_train, y_test):
  """One line why the detector cannot be trained or evaluated, or None."""
  for part, y in (('training', y_train), ('test', y_test)):
    classes = np.unique(y)
    if classes.size == 0:
      return 'no kept example in the %s part' % part
    if classes.size < 2:
      return '%s part has only one class (%s)' % (part, ', '.join(str(c) for c in classes) or
                                                   'no rows')
  smallest = np.unique(y_train, return_counts=True)[1].min()
  if smallest < 2:
    return 'training part has a class with 1 example; cross-validation needs 2'
  return None


def _logistic_regression_cv(folds, seed):
  """LogisticRegressionCV with an L2 penalty, spelled without FutureWarnings on sklearn >= 1.8."""
  params = inspect.signature(LogisticRegressionCV).parameters
  options = {}
  if params['penalty'].default == 'deprecated':
    options['l1_ratios'] = (0.0,)
  if 'use_legacy_attributes' in params:
    options['use_legacy_attributes'] = False
  return LogisticRegressionCV(cv=folds, scoring='accuracy', max_iter=10000, n_jobs=1,
                              random_state=seed, **options)


def supervised_detector(x_train, y_train, x_test, y_test, min_max=False, seed=0):
  """Fits the logistic-regression detector of Ma et al. / Lee et al. and scores the test part.

  Both papers fit scikit-learn's LogisticRegressionCV on the characteristics (Ma et al. with a
  MinMax scaling first); which examples form the training part is the caller's choice.

  Pipeline: optional MinMaxScaler, then LogisticRegressionCV (L2, accuracy-selected C,
  stratified 5-fold CV, fewer folds when the smallest class has fewer examples).

  Args:
    x_train, x_test: [N, F] characteristic vectors; y_train, y_test: [N] 1 adversarial,
      0 normal or noisy.
    min_max: scale features to [0, 1] (fitted on the training part) first.
    seed: random_state of the regression.

  Returns:
    {'auroc', 'detected_at_fpr5' (`detected_at_fpr` at 5 %), 'scores' (test decision
    scores, higher = more adversarial), 'model' (the fitted pipeline)}; or {'auroc': None,
    'detected_at_fpr5': None, 'reason'} when a part has only one class.
  """
  x_train, x_test = _as_rows(x_train), _as_rows(x_test)
  y_train = np.asarray(y_train, np.int64).reshape(-1)
  y_test = np.asarray(y_test, np.int64).reshape(-1)
  if not set(np.unique(np.concatenate([y_train, y_test]))) <= {0, 1}:
    raise ValueError('labels must be 0 (normal/noisy) or 1 (adversarial)')
  reason = _unfit_reason(y_train, y_test)
  if reason:
    return {'auroc': None, 'detected_at_fpr5': None, 'reason': reason}
  folds = int(min(_CV_FOLDS, np.bincount(y_train).min()))
  steps = ([('min_max', MinMaxScaler())] if min_max else []) + [
      ('logistic', _logistic_regression_cv(folds, seed))]
  model = Pipeline(steps).fit(x_train, y_train)
  scores = model.decision_function(x_test)
  return {'auroc': float(roc_auc_score(y_test, scores)),
          'detected_at_fpr5': detected_at_fpr(scores[y_test == 0], scores[y_test == 1], 0.05),
          'scores': scores, 'model': model}
