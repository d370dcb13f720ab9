"""K-density detector and detection metrics (numpy, vectorized).

Implements the detection side of Pang et al., "Towards Robust Detection of Adversarial
Examples", NeurIPS 2018 (https://arxiv.org/abs/1706.00633): the kernel-density (K-density)
score on the 64-d penultimate feature, the confidence and non-maximal-entropy (non-ME) scores,
ROC-AUC over the kept examples, the per-class threshold test, and the report tables and plots
(the paper's Table 2 layout, ROC curves, t-SNE scatter plots).

Every `logits` argument here is already flipped for RCE models by the caller; apart from
`sigma2_for`, nothing in this module knows whether a model was trained with CE or RCE.
"""
import csv
import io

from absl import logging
import matplotlib
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
import numpy as np
from scipy.special import logsumexp
from scipy.stats import rankdata
from sklearn.manifold import TSNE
from sklearn.metrics import roc_curve

import io_utils

NUM_CLASSES = 10
# Rows scored per matrix op; bounds memory at _ROW_CHUNK x (points per class) float64.
_ROW_CHUNK = 4096

TABLE_METRICS = ('confidence', 'non_me', 'k_density')
METRIC_NAMES = {'confidence': 'Confidence', 'non_me': 'non-ME', 'k_density': 'K-density'}
TABLE_MODELS = ('CE', 'RCE')
NOT_COMPUTABLE_NOTE = 'n/c: not computable (fewer than two kept examples or only one class)'


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


def select_kernel_points(features, labels, per_class=1000, seed=0, num_classes=NUM_CLASSES):
  """Draws `per_class` training features per class, without replacement, for the kernel.

  Args:
    features: [N, D] float training features.
    labels: [N] int true labels in [0, num_classes).
    per_class: points per class; a class with fewer gives all of its points (with a warning).
    seed: seed of the draw; the same seed gives the same points.
    num_classes: number of classes.

  Returns:
    (points [M, D] float32, point_labels [M] int64), grouped by class.

  Raises:
    ValueError: a class has no training features.
  """
  labels = np.asarray(labels).reshape(-1)
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


def per_class_median_density(kd, features, labels, num_classes=NUM_CLASSES):
  """Median K-density of each class's training features under their own class.

  Args:
    kd: a fitted KernelDensity.
    features: [N, D] float training features.
    labels: [N] int true labels.
    num_classes: number of classes.

  Returns:
    [num_classes] float64 medians (the default thresholds of `threshold_test`).

  Raises:
    ValueError: a class has no training features.
  """
  labels = np.asarray(labels).reshape(-1)
  scores = kd.score(features, labels)
  medians = np.empty(num_classes, np.float64)
  for c in range(num_classes):
    if not np.any(labels == c):
      raise ValueError('Class %d has no training features.' % c)
    medians[c] = np.median(scores[labels == c])
  return medians


def kept_mask(labels_true, labels_nor, labels_adv):
  """[N] bool: normal version classified correctly and adversarial version wrongly."""
  labels_true = np.asarray(labels_true).reshape(-1)
  return ((np.asarray(labels_nor).reshape(-1) == labels_true)
          & (np.asarray(labels_adv).reshape(-1) != labels_true))


def roc_auc(scores_normal, scores_adv):
  """ROC-AUC with normal examples as positives; a higher score means more normal.

  The Mann-Whitney rank-sum statistic U / (n_pos * n_neg) with average ranks for ties, i.e.
  the fraction of (normal, adversarial) pairs ordered correctly, ties counting 1/2; equal to
  `sklearn.metrics.roc_auc_score` on the concatenation.

  Args:
    scores_normal: [n_pos] float scores of the kept normal examples.
    scores_adv: [n_neg] float scores of the kept adversarial examples.

  Returns:
    The AUC as a float, or None when it is not computable: either side empty (so fewer than
    two examples, or only one class).

  Raises:
    ValueError: a score is NaN.
  """
  pos = np.asarray(scores_normal, np.float64).reshape(-1)
  neg = np.asarray(scores_adv, np.float64).reshape(-1)
  if pos.size < 1 or neg.size < 1 or pos.size + neg.size < 2:
    return None
  if np.isnan(pos).any() or np.isnan(neg).any():
    raise ValueError('roc_auc got NaN scores.')
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
  pred = np.asarray(pred).reshape(-1)
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
    thresholds: [num_classes] float thresholds (e.g. `per_class_median_density`).
    features_nor: [N, D] features of the normal examples; pred_nor: their [N] predicted labels.
    labels_true: [N] int true labels (shared by the normal and adversarial sets).
    features_adv: [N, D] features of the adversarial examples; pred_adv: their predictions.

  Returns:
    {'normal': stats, 'adversarial': stats}, stats = {'accepted_fraction', 'accepted_accuracy',
    'n'}; accuracy is the fraction of accepted inputs predicted as labels_true, None when
    nothing is accepted.
  """
  with np.errstate(divide='ignore'):
    log_t = np.log(np.asarray(thresholds, np.float64))
  labels_true = np.asarray(labels_true).reshape(-1)
  return {'normal': _accept_stats(kd, log_t, features_nor, pred_nor, labels_true),
          'adversarial': _accept_stats(kd, log_t, features_adv, pred_adv, labels_true)}


def _table_columns(with_kept):
  cols = ['%s %s' % (METRIC_NAMES[m], model) for m in TABLE_METRICS for model in TABLE_MODELS]
  return cols + ['kept %s' % model for model in TABLE_MODELS] if with_kept else cols


def table_markdown(rows, title=None):
  """Markdown table in the layout of the paper's Table 2.

  Args:
    rows: list of (attack_name, aucs, [extra]); aucs maps (metric, model) -> AUC or None, metric
      in TABLE_METRICS and model 'CE' / 'RCE'; optional extra maps model -> number kept.
    title: optional heading.

  Returns:
    The Markdown text: AUCs with 4 decimals, `n/c` for not computable (with a footnote), `-`
    for results that are missing.
  """
  with_kept = any(len(r) > 2 and r[2] for r in rows)
  lines = ['### %s' % title, ''] if title else []
  cols = ['Attack'] + _table_columns(with_kept)
  lines += ['| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)]
  any_nc = False
  for row in rows:
    cells = [str(row[0])]
    for m in TABLE_METRICS:
      for model in TABLE_MODELS:
        if (m, model) not in row[1]:
          cells.append('-')
        elif row[1][(m, model)] is None:
          cells.append('n/c')
          any_nc = True
        else:
          cells.append('%.4f' % row[1][(m, model)])
    if with_kept:
      extra = row[2] if len(row) > 2 and row[2] else {}
      cells += [str(extra.get(model, '-')) for model in TABLE_MODELS]
    lines.append('| ' + ' | '.join(cells) + ' |')
  if any_nc:
    lines += ['', NOT_COMPUTABLE_NOTE]
  return '\n'.join(lines) + '\n'


def table_csv(rows):
  """The `table_markdown` data as wide CSV: 'nan' for not computable, empty for missing."""
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator='\n')
  writer.writerow(['Attack'] + _table_columns(True))
  for row in rows:
    cells = [row[0]]
    for m in TABLE_METRICS:
      for model in TABLE_MODELS:
        if (m, model) not in row[1]:
          cells.append('')
        else:
          auc = row[1][(m, model)]
          cells.append('nan' if auc is None else repr(float(auc)))
    extra = row[2] if len(row) > 2 and row[2] else {}
    cells += [extra.get(model, '') for model in TABLE_MODELS]
    writer.writerow(cells)
  return buf.getvalue()


def _save_png(fig, path):
  """Writes the figure as a PNG atomically; returns the file's SHA-256."""
  buf = io.BytesIO()
  fig.savefig(buf, format='png', dpi=100, bbox_inches='tight')
  return io_utils.atomic_write_bytes(path, buf.getvalue())


def plot_roc(curves, path, title):
  """Writes ROC curves, one PNG, atomically.

  Args:
    curves: list of (label, fpr [P] float, tpr [P] float, auc float or None).
    path: output PNG path.
    title: plot title.
  """
  # Figure, not pyplot: no global figure state to close, no GUI backend needed (renders via Agg).
  fig = Figure(figsize=(5.5, 5))
  ax = fig.add_subplot(1, 1, 1)
  ax.plot([0, 1], [0, 1], color='grey', linestyle='--', linewidth=1)
  for label, fpr, tpr, auc in curves:
    ax.plot(fpr, tpr, label='%s (AUC %s)' % (label, 'n/c' if auc is None else '%.4f' % auc))
  ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel='False positive rate',
         ylabel='True positive rate', title=title)
  if curves:
    ax.legend(loc='lower right', fontsize='small')
  return _save_png(fig, path)


EXACT_TSNE_MAX = 1500


def tsne_embed(features, seed=0, perplexity=30.0):
  """2-D t-SNE embedding: [N, D] float features (N >= 2) -> [N, 2] float64.

  The perplexity is clipped to min(perplexity, max(5, (N - 1) / 3)) and below N, as
  scikit-learn requires. Up to EXACT_TSNE_MAX points the exact gradient is used: for the
  few hundred points of a plot it is much faster than Barnes-Hut's tree set-up.
  """
  x = np.asarray(features, np.float32)
  n = x.shape[0]
  perp = min(float(perplexity), max(5.0, (n - 1) / 3.0), n - 1.0)
  method = 'exact' if n <= EXACT_TSNE_MAX else 'barnes_hut'
  tsne = TSNE(n_components=2, perplexity=perp, init='pca', random_state=seed, method=method)
  return tsne.fit_transform(x).astype(np.float64)


def plot_tsne(panels, path):
  """Writes t-SNE scatter plots side by side (e.g. CE and RCE), one PNG, atomically.

  Args:
    panels: list of dicts {'title': str, 'embedding': [N, 2] float, 'labels': [N] int class,
      'is_adv': [N] bool}; points coloured by class, adversarial ones marked with 'x'.
    path: output PNG path.
  """
  colors = matplotlib.colormaps['tab10'].colors
  fig = Figure(figsize=(6 * len(panels), 5.5))
  for i, panel in enumerate(panels):
    ax = fig.add_subplot(1, len(panels), i + 1)
    emb = np.asarray(panel['embedding'])
    labels = np.asarray(panel['labels']).astype(int)
    is_adv = np.asarray(panel['is_adv'], bool)
    point_colors = np.asarray(colors)[labels % len(colors)]
    ax.scatter(emb[~is_adv, 0], emb[~is_adv, 1], c=point_colors[~is_adv], s=6, marker='o')
    ax.scatter(emb[is_adv, 0], emb[is_adv, 1], c=point_colors[is_adv], s=40, marker='x',
               linewidths=1.5)
    handles = [Line2D([], [], marker='o', linestyle='None', color=colors[c], label=str(c))
               for c in range(NUM_CLASSES)]
    handles.append(Line2D([], [], marker='x', linestyle='None', color='k', label='adversarial'))
    ax.legend(handles=handles, loc='best', fontsize='x-small', markerscale=1.2)
    ax.set_title(panel['title'])
    ax.set_xticks([])
    ax.set_yticks([])
  _save_png(fig, path)
