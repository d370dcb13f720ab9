"""Tables and figures of the detection report: Markdown/CSV tables, ROC and t-SNE PNGs.

Renders what detection.py computes (Pang et al., "Towards Robust Detection of Adversarial
Examples", NeurIPS 2018, https://arxiv.org/abs/1706.00633): the paper's Table 2 layout (rows
attacks, columns Confidence / non-ME / K-density x CE / RCE, kept counts and the attack's
success rate), the thresholding-test table, ROC curves (a CE and an RCE panel per attack), and
t-SNE scatter plots of the features. Nothing here computes a detection score; the callers pass
rows whose attack titles are already resolved.

Every PNG is written atomically through io_utils and the writer returns the file's SHA-256.
"""
import csv
import io

import matplotlib
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
import numpy as np
from sklearn.manifold import TSNE

from rce.detection import detection
from rce.results import io_utils
from rce.reports import report_tables

# Column order of the tables: the detection scores, then the models.
TABLE_METRICS = detection.METRICS
METRIC_NAMES = {'confidence': 'Confidence', 'non_me': 'non-ME', 'k_density': 'K-density',
                # unsupervised, on the final feature (detect_characteristics)
                'mahalanobis_feature': 'Mahalanobis', 'lid_feature': 'LID'}
TABLE_MODELS = ('CE', 'RCE')
# One colour (tab10) and line style per detection score, the same in every ROC figure; the
# dashes tell apart curves that coincide (Confidence and non-ME often do).
_TAB10 = matplotlib.colormaps['tab10'].colors
METRIC_COLORS = {'confidence': _TAB10[0], 'non_me': _TAB10[1], 'k_density': _TAB10[2],
                 'mahalanobis_feature': _TAB10[3], 'lid_feature': _TAB10[4]}
METRIC_LINESTYLES = {'confidence': '-', 'non_me': '--', 'k_density': '-',
                     'mahalanobis_feature': '-.', 'lid_feature': (0, (1, 1))}
# Axis range of the ROC panels: a little past [0, 1], so curves on the border stay visible.
ROC_LIMITS = (-0.02, 1.02)
# Width of one ROC panel (CE or RCE) in inches; the figure is two of them wide.
ROC_PANEL_INCHES = 4.5
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


def _table_columns(with_kept, metrics=TABLE_METRICS, with_success=False):
  cols = ['%s %s' % (METRIC_NAMES[m], model) for m in metrics for model in TABLE_MODELS]
  if with_kept:
    cols += ['kept %s' % model for model in TABLE_MODELS]
  if with_success:
    cols += ['success %s' % model for model in TABLE_MODELS]
  return cols


def _row_counts(row):
  """(kept, clean_correct) of a table row: dicts model -> count, empty when not given."""
  kept = row[2] if len(row) > 2 and row[2] else {}
  clean = row[3] if len(row) > 3 and row[3] else {}
  return kept, clean


def success_rate(kept, clean_correct):
  """The attack's success rate, kept / clean_correct, or None without a clean-correct image.

  Args:
    kept: number of kept examples (clean image classified correctly, adversarial wrongly), or
      None when unknown.
    clean_correct: number of clean images classified correctly, or None when unknown.

  Returns:
    float in [0, 1], or None when either count is missing or clean_correct is 0.
  """
  if kept is None or not clean_correct:
    return None
  return float(kept) / float(clean_correct)


def table_markdown(rows, title=None, metrics=TABLE_METRICS):
  """Markdown table in the layout of the paper's Table 2.

  Args:
    rows: list of (attack_title, aucs, [kept, [clean_correct]]); aucs maps (metric, model) ->
      AUC or None, metric in TABLE_METRICS and model 'CE' / 'RCE'; optional kept maps model ->
      number of kept examples, optional clean_correct model -> number of clean images
      classified correctly. With clean_correct the table states each attack's success rate
      (kept / clean_correct), so that a row of n/c explains itself (the attack failed).
    title: optional heading.
    metrics: the score columns (the paper's three by default; detect adds LID and
      Mahalanobis when there are characteristics).

  Returns:
    The Markdown text: AUCs and success rates with 4 decimals, `n/c` for not computable (with
    a footnote), `-` for results that are missing and for the success rate of a model with no
    clean-correct image; a footnote defines the success rate.
  """
  with_kept = any(_row_counts(r)[0] for r in rows)
  with_success = any(_row_counts(r)[1] for r in rows)
  lines = ['### %s' % title, ''] if title else []
  cols = ['Attack'] + _table_columns(with_kept, metrics, with_success)
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
    kept, clean = _row_counts(row)
    if with_kept:
      cells += [str(kept.get(model, '-')) for model in TABLE_MODELS]
    if with_success:
      cells += [_fmt(success_rate(kept.get(model), clean.get(model))) for model in TABLE_MODELS]
    lines.append('| ' + ' | '.join(cells) + ' |')
  if any_nc:
    lines += ['', NOT_COMPUTABLE_NOTE]
  if with_success:
    lines += ['', report_tables.TABLE2_SUCCESS_NOTE]
  return '\n'.join(lines) + '\n'


def table_csv(rows, metrics=TABLE_METRICS):
  """The `table_markdown` data as wide CSV: 'nan' for not computable, empty for missing.

  The kept and success columns are always there; a success rate without a clean-correct
  image (or without the counts) is empty, as in the Markdown's `-`.
  """
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator='\n')
  writer.writerow(['Attack'] + _table_columns(True, metrics, with_success=True))
  for row in rows:
    cells = [row[0]]
    for m in metrics:
      for model in TABLE_MODELS:
        if (m, model) not in row[1]:
          cells.append('')
        else:
          auc = row[1][(m, model)]
          cells.append('nan' if auc is None else repr(float(auc)))
    kept, clean = _row_counts(row)
    cells += [kept.get(model, '') for model in TABLE_MODELS]
    for model in TABLE_MODELS:
      rate = success_rate(kept.get(model), clean.get(model))
      cells.append('' if rate is None else repr(rate))
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


def roc_figure(curves, title, empty_notes=None):
  """The ROC figure of one attack: two panels, CE | RCE, one curve per detection score.

  Each score has its colour and line style from METRIC_COLORS / METRIC_LINESTYLES, the same
  in every figure, and its AUC in the legend; the legend sits under its panel so that it
  hides no curve, and the axes reach a little past [0, 1] so that a curve on the border
  (TPR 1.0, FPR 0) stays visible. A model without curves gets a panel saying why.

  Args:
    curves: {model: {metric: (fpr [P] float, tpr [P] float, auc float or None)}}, model in
      TABLE_MODELS, metric a key of METRIC_NAMES; a model may be absent or map to {}.
    title: the figure's title (attack and dataset).
    empty_notes: {model: text} shown in a panel without curves; 'no kept examples' by default.

  Returns:
    The matplotlib Figure (not saved).

  Raises:
    ValueError: a model outside TABLE_MODELS or a metric outside METRIC_NAMES.
  """
  unknown = sorted(set(curves) - set(TABLE_MODELS))
  unknown += sorted({m for per in curves.values() for m in per} - set(METRIC_NAMES))
  if unknown:
    raise ValueError('roc_figure: unknown model or metric %s (models %s, metrics %s)'
                     % (unknown, TABLE_MODELS, sorted(METRIC_NAMES)))
  empty_notes = empty_notes or {}
  # Figure, not pyplot: no global figure state to close, no GUI backend needed (renders via Agg).
  # The height leaves room for the longest legend under the square panels, and no more.
  entries = max([len(per) for per in curves.values()] + [1])
  fig = Figure(figsize=(ROC_PANEL_INCHES * len(TABLE_MODELS),
                        ROC_PANEL_INCHES + 0.4 + 0.22 * entries), layout='constrained')
  axes = fig.subplots(1, len(TABLE_MODELS), sharey=True)
  for ax, model in zip(axes, TABLE_MODELS):
    per_metric = curves.get(model) or {}
    if per_metric:
      ax.plot([0, 1], [0, 1], color='grey', linestyle=':', linewidth=1, label='_chance')
    for metric in METRIC_NAMES:  # fixed order: the legends of all figures read alike
      if metric not in per_metric:
        continue
      fpr, tpr, auc = per_metric[metric]
      ax.plot(fpr, tpr, color=METRIC_COLORS[metric], linestyle=METRIC_LINESTYLES[metric],
              linewidth=1.8, label='%s (AUC %s)' % (METRIC_NAMES[metric],
                                                    'n/c' if auc is None else '%.4f' % auc))
    ax.set(xlim=ROC_LIMITS, ylim=ROC_LIMITS, xlabel='False positive rate', title=model,
           aspect='equal')
    ax.grid(True, color='0.9', linewidth=0.8)
    if per_metric:
      ax.legend(loc='upper center', bbox_to_anchor=(0.5, -0.14), fontsize='small',
                frameon=False)
    else:
      ax.text(0.5, 0.5, empty_notes.get(model, 'no kept examples'), transform=ax.transAxes,
              ha='center', va='center', wrap=True,
              bbox={'boxstyle': 'round', 'facecolor': 'white', 'edgecolor': '0.6'})
  axes[0].set_ylabel('True positive rate')
  axes[-1].tick_params(labelleft=True)
  fig.suptitle(title)
  return fig


def plot_roc(curves, path, title, empty_notes=None):
  """Writes the ROC figure of `roc_figure` (panels CE | RCE) as one PNG, atomically.

  Args:
    curves, title, empty_notes: as roc_figure.
    path: output PNG path.

  Returns:
    The hex SHA-256 of the PNG written.
  """
  return _save_png(roc_figure(curves, title, empty_notes), path)


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
