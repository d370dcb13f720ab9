"""K-density detector and detection metrics (numpy, vectorized).

Implements the detection side of Pang et al., "Towards Robust Detection of Adversarial
Examples", NeurIPS 2018 (https://arxiv.org/abs/1706.00633): the kernel-density (K-density)
score on the 64-d penultimate feature, the confidence and non-maximal-entropy (non-ME) scores,
ROC-AUC over the kept examples, and the per-class threshold test. The tables and figures that
show them are in report_render.py.

Every `logits` argument here is already flipped for RCE models by the caller; apart from
`sigma2_for`, nothing in this module knows whether a model was trained with CE or RCE. Nothing
here assumes a number of classes: functions that need it take `num_classes` explicitly.
"""
from absl import logging
import numpy as np
from scipy.special import logsumexp
from scipy.stats import rankdata
from sklearn.metrics import roc_curve

# Rows scored per matrix op; bounds memory at _ROW_CHUNK x (points per class) float64.
_ROW_CHUNK = 4096

# The detection scores (keys of `detection_scores`; higher = more normal), in table order.
METRICS = ('confidence', 'non_me', 'k_density')


def sigma2_for(rce):
  """Kernel bandwidth sigma^2 of the paper: 0.1/0.26 for RCE, 1.0/0.26 for CE."""
  return (0.1 if rce else 1.0) / 0.26


def softmax(logits):
  """Numerically stable softmax over the last axis.

  Args:
    logits: [N, K] float logits (already flipped for RCE).

  Returns:
    [N, K] float64 probabilities, rows summing to 1.
  """
  z = np.asarray(logits, np.float64)
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def prediction_stats(logits):
  """Predicted labels, confidence and non-ME of flipped logits [N, K] (numpy)."""
  probs = softmax(logits)
  return probs.argmax(axis=1), confidence(probs), non_me(probs)


def confidence(probs):
  """Max probability per row: [N, K] probabilities -> [N] float64."""
  return np.asarray(probs, np.float64).max(axis=1)


def non_me(probs):
  """Non-maximal entropy: entropy of the renormalised non-maximal probabilities.

  With y = argmax p, p_hat_i = p_i / sum_{j != y} p_j (i != y) and
  nonME = -sum_{i != y} p_hat_i log p_hat_i, with 0 log 0 = 0. A row whose non-maximal mass
  underflows to 0 gets 0.

  Args:
    probs: [N, K] float probabilities.

  Returns:
    [N] float64 in [0, log(K - 1)].
  """
  p = np.array(probs, np.float64)
  p[np.arange(p.shape[0]), p.argmax(axis=1)] = 0.0
  mass = p.sum(axis=1, keepdims=True)
  p_hat = np.divide(p, mass, out=np.zeros_like(p), where=mass > 0)
  log_p = np.log(p_hat, out=np.zeros_like(p_hat), where=p_hat > 0)
  return np.maximum(-(p_hat * log_p).sum(axis=1), 0.0)


def _draw_per_class(labels, classes, per_class, seed, what):
  """Indices of the first `per_class` of a seeded permutation of each class's rows."""
  rng = np.random.RandomState(seed)
  chosen = []
  for c in classes:
    idx = np.flatnonzero(labels == c)
    if idx.size == 0:
      raise ValueError('Class %d has no %s.' % (c, what))
    if idx.size < per_class:
      logging.warning('Class %d has only %d %s (wanted %d); taking all of them.',
                      c, idx.size, what, per_class)
    chosen.append(rng.permutation(idx)[:per_class])
  return np.concatenate(chosen)


def _check_labels(labels, num_classes, what):
  """ValueError unless every label lies in [0, num_classes)."""
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError('%s must lie in [0, %d), got %d..%d'
                     % (what, num_classes, labels.min(), labels.max()))


def select_kernel_points(features, labels, num_classes, per_class=1000, seed=0):
  """Draws `per_class` training features per class, without replacement, for the kernel.

  Args:
    features: [N, D] float training features.
    labels: [N] int true labels in [0, num_classes).
    num_classes: number of classes K; every class must be present.
    per_class: points per class; a class with fewer gives all of its points (with a warning).
    seed: seed of the draw; the same seed gives the same points.

  Returns:
    (points [M, D] float32, point_labels [M] int64), grouped by class.

  Raises:
    ValueError: a class has no training features, or a label is outside [0, num_classes).
  """
  labels = np.asarray(labels).reshape(-1)
  _check_labels(labels, num_classes, 'Training labels')
  idx = _draw_per_class(labels, range(num_classes), per_class, seed, 'training features')
  return np.asarray(features, np.float32)[idx], labels[idx].astype(np.int64)


def subset_per_class(points, point_labels, per_class=100, seed=0):
  """The `per_class`-per-class subset of the kernel points used by the white-box C&W attack.

  Args:
    points: [M, D] float kernel points.
    point_labels: [M] int labels of the points.
    per_class: points kept per class (first of a seeded permutation per class).
    seed: seed of the permutation.

  Returns:
    (points [M', D] float32, point_labels [M'] int64), grouped by class.
  """
  point_labels = np.asarray(point_labels).reshape(-1)
  idx = _draw_per_class(point_labels, np.unique(point_labels), per_class, seed, 'kernel points')
  return np.asarray(points, np.float32)[idx], point_labels[idx].astype(np.int64)


class KernelDensity:
  """Gaussian K-density per class: mean_i exp(-||z - z_i||^2 / sigma2) over class points."""

  def __init__(self, sigma2):
    self.sigma2 = float(sigma2)
    self._points = {}

  def fit(self, points, point_labels):
    """Stores the kernel points ([M, D] float, labels [M] int) per class; returns self."""
    points = np.asarray(points, np.float64)
    point_labels = np.asarray(point_labels).reshape(-1)
    self._points = {}
    for c in np.unique(point_labels):
      z = points[point_labels == c]
      self._points[int(c)] = (z, np.einsum('ij,ij->i', z, z))
    return self

  def log_score(self, features, classes):
    """Log K-density of each row under the kernel points of its class.

    Computed with logsumexp, so it stays finite where the density underflows.

    Args:
      features: [N, D] float features.
      classes: [N] int class of each row (typically the predicted class).

    Returns:
      [N] float64 log densities.

    Raises:
      ValueError: a requested class has no kernel points.
    """
    x = np.asarray(features, np.float64)
    classes = np.asarray(classes).reshape(-1)
    out = np.empty(x.shape[0], np.float64)
    x_sq = np.einsum('ij,ij->i', x, x)
    for c in np.unique(classes):
      if int(c) not in self._points:
        raise ValueError('Class %d has no kernel points.' % c)
      z, z_sq = self._points[int(c)]
      rows = np.flatnonzero(classes == c)
      for start in range(0, rows.size, _ROW_CHUNK):
        r = rows[start:start + _ROW_CHUNK]
        d2 = np.maximum(x_sq[r, None] - 2.0 * (x[r] @ z.T) + z_sq[None, :], 0.0)
        out[r] = logsumexp(-d2 / self.sigma2, axis=1) - np.log(z.shape[0])
    return out

  def score(self, features, classes):
    """K-density (exp of `log_score`): [N, D] features, [N] classes -> [N] float64."""
    return np.exp(self.log_score(features, classes))


def per_class_median_density(kd, features, labels, num_classes):
  """Median K-density of each class's training features under their own class.

  Args:
    kd: a fitted KernelDensity.
    features: [N, D] float training features.
    labels: [N] int true labels in [0, num_classes).
    num_classes: number of classes K; every class must be present.

  Returns:
    [num_classes] float64 medians (the default thresholds of `threshold_test`).

  Raises:
    ValueError: a class has no training features, or a label is outside [0, num_classes).
  """
  labels = np.asarray(labels).reshape(-1)
  _check_labels(labels, num_classes, 'Training labels')
  scores = kd.score(features, labels)
  medians = np.empty(num_classes, np.float64)
  for c in range(num_classes):
    if not np.any(labels == c):
      raise ValueError('Class %d has no training features.' % c)
    medians[c] = np.median(scores[labels == c])
  return medians


def kernel_params(features, labels, rce, num_classes, per_class=1000, subset=100, seed=0):
  """Kernel points, the white-box subset and its per-class median densities.

  Args:
    features: [N, 64] training features; labels: [N] true labels in [0, num_classes).
    rce: selects sigma2.
    num_classes: number of classes K of the dataset; every class must be present.
    per_class: kernel points per class (detection); subset: points per class (C&W-wb).
    seed: seed of the draws of the kernel points and of the subset.

  Returns:
    dict of arrays for result_files.save_kernel_params; 'medians' and 'subset_medians' are
    [num_classes] float64.
  """
  sigma2 = sigma2_for(rce)
  points, point_labels = select_kernel_points(features, labels, num_classes,
                                                        per_class, seed)
  sub_points, sub_labels = subset_per_class(points, point_labels, subset, seed)
  kd_sub = KernelDensity(sigma2).fit(sub_points, sub_labels)
  medians = per_class_median_density(kd_sub, features, labels, num_classes)
  kd = KernelDensity(sigma2).fit(points, point_labels)
  train_medians = per_class_median_density(kd, features, labels, num_classes)
  return {'points': points, 'point_labels': point_labels, 'subset_points': sub_points,
          'subset_labels': sub_labels, 'subset_medians': medians,
          'medians': train_medians, 'sigma2': np.float64(sigma2), 'seed': np.int64(seed)}


def kept_mask(labels_true, labels_nor, labels_adv):
  """[N] bool: normal version classified correctly and adversarial version wrongly."""
  labels_true = np.asarray(labels_true).reshape(-1)
  return ((np.asarray(labels_nor).reshape(-1) == labels_true)
          & (np.asarray(labels_adv).reshape(-1) != labels_true))


# How `roc_auc` counts a (normal, adversarial) pair with equal scores.
AUC_TIES = ('half', 'original')


def check_auc_ties(ties):
  """ValueError naming the valid rules unless `ties` is one of AUC_TIES."""
  if ties not in AUC_TIES:
    raise ValueError('unknown AUC tie rule %r; valid: %s'
                     % (ties, ', '.join(repr(t) for t in AUC_TIES)))


def roc_auc(scores_normal, scores_adv, ties='half'):
  """ROC-AUC with normal examples as positives; a higher score means more normal.

  With P the n_pos normal scores and Q the n_neg adversarial scores,

    AUC = (#{(i, j): P_i > Q_j} + c * #{(i, j): P_i == Q_j}) / (n_pos * n_neg),

  where c is the credit of a tied pair:

  * ties='half': c = 1/2. The Mann-Whitney rank-sum statistic U / (n_pos * n_neg) with
    average ranks for ties; equal to `sklearn.metrics.roc_auc_score` on the concatenation.
  * ties='original': c = 0, i.e. a tie counts against the normal example. This is the rule
    of the original code's `Matlab_scripts/AUC.m` (github.com/P2333/Reverse-Cross-Entropy),
    called as AUC([ones(1, n) zeros(1, n)], [normal adversarial]) by auc_of_roc_RCE.m: it
    ranks the concatenation with Matlab's stable `sort`, so in a group of equal scores the
    normal examples (first in the input) take the lowest ranks, and returns
    (sum of the normal examples' ranks - n_pos (n_pos + 1) / 2) / (n_pos * n_neg). Computed
    here as the count above with a binary search of each normal score in the sorted
    adversarial scores; the numerator is an exact integer, so the result equals AUC.m's.

  The two rules agree when no normal score equals an adversarial one. Ties matter for the
  confidence score, whose float32 softmax saturates at 1.0 on both sides.

  Args:
    scores_normal: [n_pos] float scores of the kept normal examples.
    scores_adv: [n_neg] float scores of the kept adversarial examples.
    ties: 'half' or 'original' (see above), the members of AUC_TIES.

  Returns:
    The AUC as a float, or None when it is not computable: either side empty (so fewer than
    two examples, or only one class).

  Raises:
    ValueError: a score is NaN, or `ties` is not one of AUC_TIES.
  """
  check_auc_ties(ties)
  pos = np.asarray(scores_normal, np.float64).reshape(-1)
  neg = np.asarray(scores_adv, np.float64).reshape(-1)
  if pos.size < 1 or neg.size < 1 or pos.size + neg.size < 2:
    return None
  if np.isnan(pos).any() or np.isnan(neg).any():
    raise ValueError('roc_auc got NaN scores.')
  if ties == 'original':
    below = np.searchsorted(np.sort(neg), pos, side='left')  # #{j: Q_j < P_i} per i
    return float(below.sum(dtype=np.int64) / (pos.size * neg.size))
  ranks = rankdata(np.concatenate([pos, neg]))
  u = ranks[:pos.size].sum() - pos.size * (pos.size + 1) / 2.0
  return float(u / (pos.size * neg.size))


def roc_curve_points(scores_normal, scores_adv):
  """(fpr, tpr) float arrays of the ROC curve, normal examples as positives."""
  pos = np.asarray(scores_normal, np.float64).reshape(-1)
  neg = np.asarray(scores_adv, np.float64).reshape(-1)
  y = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
  fpr, tpr, _ = roc_curve(y, np.concatenate([pos, neg]))
  return fpr, tpr


def detection_scores(logits, features, kd):
  """The three detection scores of each example (higher = more normal).

  Args:
    logits: [N, K] float logits (already flipped for RCE).
    features: [N, D] float features.
    kd: a fitted KernelDensity.

  Returns:
    Dict of [N] float64 arrays: 'confidence', 'non_me', 'k_density' (K-density under the
    predicted class), and 'log_k_density' (its log, which does not underflow; AUCs are the same
    unless the density underflows to 0).
  """
  probs = softmax(logits)
  log_kd = kd.log_score(features, probs.argmax(axis=1))
  return {'confidence': confidence(probs), 'non_me': non_me(probs),
          'k_density': np.exp(log_kd), 'log_k_density': log_kd}


def _accept_stats(kd, log_thresholds, features, pred, labels_true):
  """n, accepted fraction and accuracy of the accepted ones for one side of `threshold_test`."""
  pred = np.asarray(pred).reshape(-1)
  _check_labels(pred, log_thresholds.size, 'Predicted labels (one threshold per class)')
  accepted = kd.log_score(features, pred) >= log_thresholds[pred]
  n = int(pred.size)
  n_acc = int(accepted.sum())
  return {'n': n,
          'accepted_fraction': n_acc / n if n else None,
          'accepted_accuracy': (float(np.mean(pred[accepted] == labels_true[accepted]))
                                if n_acc else None)}


def threshold_test(kd, thresholds, features_nor, pred_nor, labels_true, features_adv,
                   pred_adv):
  """Per-class K-density threshold: accept an input when density >= threshold[predicted].

  The comparison is made on log densities, so it does not suffer from underflow.

  Args:
    kd: a fitted KernelDensity.
    thresholds: [K] float thresholds, one per class (e.g. `per_class_median_density`); K is
      the number of classes.
    features_nor: [N, D] features of the normal examples; pred_nor: their [N] predicted labels.
    labels_true: [N] int true labels (shared by the normal and adversarial sets).
    features_adv: [N, D] features of the adversarial examples; pred_adv: their predictions.

  Returns:
    {'normal': stats, 'adversarial': stats}, stats = {'accepted_fraction', 'accepted_accuracy',
    'n'}; accuracy is the fraction of accepted inputs predicted as labels_true, None when
    nothing is accepted.

  Raises:
    ValueError: a predicted label is outside [0, K).
  """
  with np.errstate(divide='ignore'):
    log_t = np.log(np.asarray(thresholds, np.float64))
  labels_true = np.asarray(labels_true).reshape(-1)
  return {'normal': _accept_stats(kd, log_t, features_nor, pred_nor, labels_true),
          'adversarial': _accept_stats(kd, log_t, features_adv, pred_adv, labels_true)}
