"""Tables and figures of the detection report: Markdown/CSV tables, ROC and t-SNE PNGs.

Renders what detection.py computes (Pang et al., "Towards Robust Detection of Adversarial
Examples", NeurIPS 2018, https://arxiv.org/abs/1706.00633): the paper's Table 2 layout (rows
attacks, columns Confidence / non-ME / K-density x CE / RCE), the thresholding-test table, ROC
curves, and t-SNE scatter plots of the features. Nothing here computes a detection score; the
callers pass rows whose attack titles are already resolved.

Every PNG is written atomically through io_utils and the writer returns the file's SHA-256.
"""
import csv
import io

import matplotlib
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
import numpy as np
from sklearn.manifold import TSNE

import detection
import io_utils

# Column order of the tables: the detection scores, then the models.
TABLE_METRICS = detection.METRICS
METRIC_NAMES = {'confidence': 'Confidence', 'non_me': 'non-ME', 'k_density': 'K-density',
                # unsupervised, on the final feature (detect_characteristics)
                'mahalanobis_feature': 'Mahalanobis', 'lid_feature': 'LID'}
TABLE_MODELS = ('CE', 'RCE')
NOT_COMPUTABLE_NOTE = 'n/c: not computable (fewer than two kept examples or only one class)'

# Up to this many points t-SNE uses the exact gradient, above it Barnes-Hut.
EXACT_TSNE_MAX = 1500
# Qualitative colour maps by size: (colormap name, number of distinct colours).
_QUALITATIVE_MAPS = (('tab10', 10), ('tab20', 20))
# Colour map sampled evenly when there are more classes than the qualitative maps hold.
_CONTINUOUS_MAP = 'turbo'
# A per-class legend is drawn only up to this many classes; beyond it, it would hide the plot.
LEGEND_MAX_CLASSES = 20


# ---- tables ------------------------------------------------------------------------------


def _table_columns(with_kept, metrics=TABLE_METRICS):
  cols = ['%s %s' % (METRIC_NAMES[m], model) for m in metrics for model in TABLE_MODELS]
  return cols + ['kept %s' % model for model in TABLE_MODELS] if with_kept else cols


def table_markdown(rows, title=None, metrics=TABLE_METRICS):
  """Markdown table in the layout of the paper's Table 2.

  Args:
    rows: list of (attack_title, aucs, [extra]); aucs maps (metric, model) -> AUC or None,
      metric in TABLE_METRICS and model 'CE' / 'RCE'; optional extra maps model -> number kept.
    title: optional heading.
    metrics: the score columns (the paper's three by default; detect adds LID and
      Mahalanobis when there are characteristics).

  Returns:
    The Markdown text: AUCs with 4 decimals, `n/c` for not computable (with a footnote), `-`
    for results that are missing.
  """
  with_kept = any(len(r) > 2 and r[2] for r in rows)
  lines = ['### %s' % title, ''] if title else []
  cols = ['Attack'] + _table_columns(with_kept, metrics)
  lines += ['| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)]
  any_nc = False
  for row in rows:
    cells = [str(row[0])]
    for m in metrics:
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


def table_csv(rows, metrics=TABLE_METRICS):
  """The `table_markdown` data as wide CSV: 'nan' for not computable, empty for missing."""
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator='\n')
  writer.writerow(['Attack'] + _table_columns(True, metrics))
  for row in rows:
    cells = [row[0]]
    for m in metrics:
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


def _fmt(value):
  return '-' if value is None else '%.4f' % value


def threshold_markdown(rows):
  """Markdown table of the thresholding test: accepted fraction and accuracy per side.

  Args:
    rows: list of (attack_title, {model: detection.threshold_test result}), in table order;
      models are listed in sorted order within an attack.

  Returns:
    The Markdown text, one line per (attack, model); fractions with 4 decimals, `-` where a
    value is None (nothing accepted, or no examples).
  """
  lines = ['| Attack | Model | normal accepted | normal acc. of accepted | adv. accepted | '
           'adv. acc. of accepted |', '|---|---|---|---|---|---|']
  for title, per_model in rows:
    for model, t in sorted(per_model.items()):
      lines.append('| %s | %s | %s | %s | %s | %s |' % (
          title, model, _fmt(t['normal']['accepted_fraction']),
          _fmt(t['normal']['accepted_accuracy']), _fmt(t['adversarial']['accepted_fraction']),
          _fmt(t['adversarial']['accepted_accuracy'])))
  return '\n'.join(lines) + '\n'


# ---- figures -----------------------------------------------------------------------------


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

  Returns:
    The hex SHA-256 of the PNG written.
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


def class_colors(num_classes):
  """One colour per class: tab10 up to 10 classes, tab20 up to 20, else `turbo` sampled K times.

  Args:
    num_classes: number of classes K >= 1.

  Returns:
    [K, 3] or [K, 4] float array of RGB(A) colours in [0, 1], row c the colour of class c.
  """
  for name, size in _QUALITATIVE_MAPS:
    if num_classes <= size:
      return np.asarray(matplotlib.colormaps[name].colors)[:num_classes]
  return matplotlib.colormaps[_CONTINUOUS_MAP](np.linspace(0.0, 1.0, num_classes))


def plot_tsne(panels, path, num_classes=None):
  """Writes t-SNE scatter plots side by side (e.g. CE and RCE), one PNG, atomically.

  Points are coloured by class (`class_colors`), adversarial ones marked with 'x'. The legend
  lists every class only up to LEGEND_MAX_CLASSES classes; it always shows the 'x' marker.

  Args:
    panels: list of dicts {'title': str, 'embedding': [N, 2] float, 'labels': [N] int class in
      [0, num_classes), 'is_adv': [N] bool}.
    path: output PNG path.
    num_classes: number of classes K; None takes 1 + the largest label of the panels.

  Returns:
    The hex SHA-256 of the PNG written.

  Raises:
    ValueError: a label is outside [0, num_classes).
  """
  all_labels = [np.asarray(p['labels']).astype(int).reshape(-1) for p in panels]
  if num_classes is None:
    num_classes = 1 + max((int(l.max()) for l in all_labels if l.size), default=0)
  for l in all_labels:
    if l.size and (l.min() < 0 or l.max() >= num_classes):
      raise ValueError('plot_tsne: labels must lie in [0, %d), got %d..%d'
                       % (num_classes, l.min(), l.max()))
  colors = class_colors(num_classes)
  fig = Figure(figsize=(6 * len(panels), 5.5))
  for i, (panel, labels) in enumerate(zip(panels, all_labels)):
    ax = fig.add_subplot(1, len(panels), i + 1)
    emb = np.asarray(panel['embedding'])
    is_adv = np.asarray(panel['is_adv'], bool)
    point_colors = colors[labels]
    ax.scatter(emb[~is_adv, 0], emb[~is_adv, 1], c=point_colors[~is_adv], s=6, marker='o')
    ax.scatter(emb[is_adv, 0], emb[is_adv, 1], c=point_colors[is_adv], s=40, marker='x',
               linewidths=1.5)
    handles = []
    if num_classes <= LEGEND_MAX_CLASSES:
      handles = [Line2D([], [], marker='o', linestyle='None', color=colors[c], label=str(c))
                 for c in range(num_classes)]
    handles.append(Line2D([], [], marker='x', linestyle='None', color='k', label='adversarial'))
    ax.legend(handles=handles, loc='best', fontsize='x-small', markerscale=1.2)
    ax.set_title(panel['title'])
    ax.set_xticks([])
    ax.set_yticks([])
  return _save_png(fig, path)
