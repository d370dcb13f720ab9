"""Tables and figures of the detection report: Markdown/CSV tables, ROC and t-SNE PNGs.

Renders what detection.py computes (Pang et al., "Towards Robust Detection of Adversarial
Examples", NeurIPS 2018, https://arxiv.org/abs/1706.00633): the paper's Table 2 layout (rows
attacks, columns Confidence / non-ME / K-density x CE / RCE, kept counts and the attack's
success rate) and the thresholding-test table as report_tables.Table values, ROC curves (a CE
and an RCE panel per attack), and t-SNE scatter plots of the features. Nothing here computes
a detection score; the callers pass rows whose attack titles are already resolved.

Every PNG is written atomically through io_utils and the writer returns the file's SHA-256.
"""
import collections
import io

import matplotlib
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
import numpy as np
from sklearn.manifold import TSNE

from rce.detection import detection
from rce.results import io_utils
from rce.reports import report_tables
from rce.tables import models

# Column order of the tables: the detection scores, then the models.
TABLE_METRICS = detection.METRICS
METRIC_NAMES = {'confidence': 'Confidence', 'non_me': 'non-ME', 'k_density': 'K-density',
                # unsupervised, on the final feature (detect_characteristics)
                'mahalanobis_feature': 'Mahalanobis', 'lid_feature': 'LID'}
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

# Up to this many points t-SNE uses the exact gradient, above it Barnes-Hut.
EXACT_TSNE_MAX = 1500
# Qualitative colour maps by size: (colormap name, number of distinct colours).
_QUALITATIVE_MAPS = (('tab10', 10), ('tab20', 20))
# Colour map sampled evenly when there are more classes than the qualitative maps hold.
_CONTINUOUS_MAP = 'turbo'
# A per-class legend is drawn only up to this many classes; beyond it, it would hide the plot.
LEGEND_MAX_CLASSES = 20


# ---- tables ------------------------------------------------------------------------------

# One row of Table 2: the attack's title, {(metric, model): AUC or None (not computable)},
# and, when known, {model: number of kept examples} and {model: the attack's success rate
# (attack_evaluation.success_rate) or None without a clean-correct image}.
Table2Row = collections.namedtuple('Table2Row', ['title', 'aucs', 'kept', 'success'],
                                   defaults=(None, None))


def table2(rows, title=None, metrics=TABLE_METRICS):
  """The paper's Table 2 as a report_tables.Table (rows attacks, name 'Table 2').

  Args:
    rows: list of Table2Row; an AUC, count or rate a row does not have is missing (`-`).
    title: optional heading of the Markdown.
    metrics: the score columns (the paper's three by default; detect adds LID and
      Mahalanobis when there are characteristics), each with a CE and an RCE column.

  Returns:
    The Table: AUCs and success rates with 4 decimals, `n/c` for not computable (with a
    footnote), `-` for results that are missing and for the success rate of a model with no
    clean-correct image; a footnote defines the success rate. The CSV has every column; the
    Markdown leaves out the kept (success) columns when no row has counts (success rates).
  """
  kept_columns = [report_tables.KEPT_COLUMN % model for model in models.MODELS]
  success_columns = [report_tables.SUCCESS_COLUMN % model for model in models.MODELS]
  columns = [('%s %s' % (METRIC_NAMES[m], model), '%.4f') for m in metrics
             for model in models.MODELS]
  columns += [(h, '%d') for h in kept_columns] + [(h, '%.4f') for h in success_columns]
  body = []
  for row in rows:
    kept, success = row.kept or {}, row.success or {}
    cells = [row.aucs.get((m, model), report_tables.MISSING) for m in metrics
             for model in models.MODELS]
    cells += [kept.get(model, report_tables.MISSING) for model in models.MODELS]
    cells += [_or_missing(success.get(model)) for model in models.MODELS]
    body.append((str(row.title), cells))
  with_success = any(row.success for row in rows)
  csv_only = ([] if any(row.kept for row in rows) else kept_columns) + (
      [] if with_success else success_columns)
  num_aucs = len(metrics) * len(models.MODELS)
  notes = [report_tables.TABLE2_NC_NOTE] if any(
      v is None for _, cells in body for v in cells[:num_aucs]) else []
  if with_success:
    notes.append(report_tables.TABLE2_SUCCESS_NOTE)
  return report_tables.Table('Table 2', columns, body, first='Attack', notes=notes,
                             title=title, csv_only=csv_only)


def _or_missing(value):
  return report_tables.MISSING if value is None else value


THRESHOLD_COLUMNS = ('normal accepted', 'normal acc. of accepted', 'adv. accepted',
                     'adv. acc. of accepted')


def threshold_table(rows, title=None):
  """The thresholding test as a report_tables.Table: accepted fraction and accuracy per side.

  Args:
    rows: list of (attack_title, {model: detection.threshold_test result}), in table order;
      models are listed in sorted order within an attack.
    title: optional heading of the Markdown.

  Returns:
    The Table, one row per (attack, model); fractions with 4 decimals, `-` where a value is
    None (nothing accepted, or no examples).
  """
  body = []
  for attack_title, per_model in rows:
    for model, t in sorted(per_model.items()):
      body.append((attack_title, [model] + [_or_missing(t[side][key]) for side in (
          'normal', 'adversarial') for key in ('accepted_fraction', 'accepted_accuracy')]))
  return report_tables.Table('Thresholding test', [('Model', '%s')] + [
      (h, '%.4f') for h in THRESHOLD_COLUMNS], body, first='Attack', title=title)


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
      models.MODELS, metric a key of METRIC_NAMES; a model may be absent or map to {}.
    title: the figure's title (attack and dataset).
    empty_notes: {model: text} shown in a panel without curves; 'no kept examples' by default.

  Returns:
    The matplotlib Figure (not saved).

  Raises:
    ValueError: a model outside models.MODELS or a metric outside METRIC_NAMES.
  """
  unknown = sorted(set(curves) - set(models.MODELS))
  unknown += sorted({m for per in curves.values() for m in per} - set(METRIC_NAMES))
  if unknown:
    raise ValueError('roc_figure: unknown model or metric %s (models %s, metrics %s)'
                     % (unknown, models.MODELS, sorted(METRIC_NAMES)))
  empty_notes = empty_notes or {}
  # Figure, not pyplot: no global figure state to close, no GUI backend needed (renders via Agg).
  # The height leaves room for the longest legend under the square panels, and no more.
  entries = max([len(per) for per in curves.values()] + [1])
  fig = Figure(figsize=(ROC_PANEL_INCHES * len(models.MODELS),
                        ROC_PANEL_INCHES + 0.4 + 0.22 * entries), layout='constrained')
  axes = fig.subplots(1, len(models.MODELS), sharey=True)
  for ax, model in zip(axes, models.MODELS):
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
