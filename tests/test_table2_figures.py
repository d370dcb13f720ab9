"""Table 2's success columns and the two-panel ROC figures (report_render, detect_report).

CPU, seeded, fast, TensorFlow-free: the figures are checked on the matplotlib Figure before it
is saved and on the PNG read back; the success rate against counts made by hand, in the
Markdown, the CSV, report_tables' reading of it, and a whole detect run on hand-made results.
"""
import csv
import io
import os

import matplotlib.colors
import matplotlib.image
import numpy as np
import pytest

from tests.helpers import (MODELS, markdown_table,  # pylint: disable=g-bad-import-order
                           save_hand_made_results)
from rce.detection import attack_evaluation
from rce.detection import detection
from rce.reports import detect_report
from rce.reports import report_render
from rce.reports import report_tables


def _curve(rng, shift, n=40):
  pos, neg = rng.normal(shift, 1, n), rng.normal(0, 1, n)
  fpr, tpr = detection.roc_curve_points(pos, neg)
  return fpr, tpr, detection.roc_auc(pos, neg)


def _all_curves(seed=0):
  """Every metric for CE, three for RCE, one of which lies on the border (AUC 1)."""
  rng = np.random.RandomState(seed)
  ce = {m: _curve(rng, s) for m, s in zip(report_render.METRIC_NAMES, (0.3, 0.5, 1.5, 2, -1))}
  rce = {'confidence': (np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 1.0]), 1.0),
         'non_me': _curve(rng, 1.0), 'k_density': _curve(rng, 3.0)}
  return {'CE': ce, 'RCE': rce}


def _legend_colours(ax):
  """{legend text: RGBA of its line} of one panel."""
  legend = ax.get_legend()
  return {t.get_text(): matplotlib.colors.to_rgba(h.get_color())
          for t, h in zip(legend.get_texts(), legend.legend_handles)}


def _metric_of(text):
  """The metric key of a legend text such as 'K-density (AUC 0.9876)'."""
  name = text.split(' (AUC ')[0]
  return next(m for m, n in report_render.METRIC_NAMES.items() if n == name)


# ---- ROC figures -------------------------------------------------------------------------


def test_roc_figure_has_ce_and_rce_panels_with_aucs_in_the_legends_and_padded_axes():
  curves = _all_curves()
  fig = report_render.roc_figure(curves, 'ROC, FGSM on mnist')
  assert len(fig.axes) == 2
  assert [ax.get_title() for ax in fig.axes] == list(MODELS)
  for ax, model in zip(fig.axes, MODELS):
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    # one entry per curve, in the fixed metric order, each with its AUC
    assert texts == ['%s (AUC %.4f)' % (report_render.METRIC_NAMES[m], curves[model][m][2])
                     for m in report_render.METRIC_NAMES if m in curves[model]], texts
    for lim in (ax.get_xlim(), ax.get_ylim()):
      assert lim[0] < 0.0 and lim[1] > 1.0, lim  # a curve at TPR 1 or FPR 0 stays visible
    # the legend is under the axes, off the curves
    fig.draw_without_rendering()
    legend_box = ax.get_legend().get_window_extent()
    assert legend_box.y1 <= ax.get_window_extent().y0, (legend_box, ax.get_window_extent())
  assert fig.texts[0].get_text() == 'ROC, FGSM on mnist'  # suptitle


def test_a_metric_has_one_colour_in_both_panels_and_in_every_figure():
  full = report_render.roc_figure(_all_curves(), 'a')
  rng = np.random.RandomState(1)
  subset = report_render.roc_figure(
      {'CE': {'lid_feature': _curve(rng, 1)},
       'RCE': {'k_density': _curve(rng, 2), 'mahalanobis_feature': _curve(rng, 1)}}, 'b')
  seen = {}
  for fig in (full, subset):
    for ax in fig.axes:
      for text, colour in _legend_colours(ax).items():
        metric = _metric_of(text)
        seen.setdefault(metric, set()).add(colour)
        assert colour == matplotlib.colors.to_rgba(report_render.METRIC_COLORS[metric])
  assert set(seen) == set(report_render.METRIC_NAMES)
  assert all(len(colours) == 1 for colours in seen.values()), seen
  assert len({c for colours in seen.values() for c in colours}) == len(seen)  # all distinct


def test_a_model_without_curves_gets_an_empty_panel_saying_why():
  rng = np.random.RandomState(2)
  fig = report_render.roc_figure({'RCE': {'k_density': _curve(rng, 2)}}, 'C&W')
  assert [ax.get_title() for ax in fig.axes] == ['CE', 'RCE']
  ce, rce = fig.axes
  assert ce.get_legend() is None and not ce.get_lines()
  assert [t.get_text() for t in ce.texts] == ['no kept examples']
  assert rce.get_legend() is not None and not rce.texts
  fig = report_render.roc_figure({'CE': {}, 'RCE': {'k_density': _curve(rng, 2)}}, 'C&W',
                                 {'CE': 'no ROC curve: 1 kept example'})
  assert [t.get_text() for t in fig.axes[0].texts] == ['no ROC curve: 1 kept example']
  with pytest.raises(ValueError, match='unknown model or metric'):
    report_render.roc_figure({'XX': {}}, 't')
  with pytest.raises(ValueError, match='unknown model or metric'):
    report_render.roc_figure({'CE': {'entropy': _curve(rng, 1)}}, 't')


def test_roc_png_is_two_panels_wide(tmp_path):
  curves = _all_curves()
  path = str(tmp_path / 'roc_fgsm.png')
  report_render.plot_roc(curves, path, 'ROC, FGSM on mnist')
  img = matplotlib.image.imread(path)
  height, width = img.shape[:2]
  fig = report_render.roc_figure(curves, 'ROC, FGSM on mnist')
  fig.draw_without_rendering()
  dpi = 100  # report_render._save_png's
  panel = report_render.ROC_PANEL_INCHES * dpi
  assert 1.8 * panel <= width <= 2.2 * panel, (width, panel)  # twice a one-panel figure
  assert width > 1.3 * height, (width, height)
  boxes = [ax.get_window_extent() for ax in fig.axes]
  assert boxes[0].x1 <= boxes[1].x0  # side by side, CE on the left
  assert boxes[0].y0 == pytest.approx(boxes[1].y0) and boxes[0].width == pytest.approx(
      boxes[1].width)
  assert boxes[0].width + boxes[1].width >= 0.7 * width  # the panels fill the width
  assert boxes[0].height == pytest.approx(boxes[0].width)  # square ROC panels


# ---- Table 2's success rate --------------------------------------------------------------

# A small fake attack, per model: labels of the clean and the adversarial images.
TRUE = np.array([0, 1, 2, 3, 4, 5, 6, 7])
FAKE = {
    # clean correct: images 0-5 (6); adversarial wrong among them: 1, 3, 4 -> kept 3, 3/6
    'CE': (np.array([0, 1, 2, 3, 4, 5, 0, 0]), np.array([0, 2, 2, 4, 5, 5, 6, 1])),
    # clean correct: none -> success '-'
    'RCE': (np.array([1, 2, 3, 4, 5, 6, 7, 0]), np.array([1, 2, 3, 4, 5, 6, 7, 0])),
}
HAND = {'CE': (3, 6), 'RCE': (0, 0)}  # (kept, clean correct), counted by hand above


def _success(kept, clean):
  return {m: attack_evaluation.success_rate(kept[m], clean[m]) for m in clean}


def _fake_rows():
  kept, clean = {}, {}
  for model, (nor, adv) in FAKE.items():
    kept[model] = int(detection.kept_mask(TRUE, nor, adv).sum())
    clean[model] = int((nor == TRUE).sum())
  assert {m: (kept[m], clean[m]) for m in FAKE} == HAND
  aucs = {(m, 'CE'): 0.75 for m in detection.METRICS}
  aucs.update({(m, 'RCE'): None for m in detection.METRICS})
  all_nc = {(m, model): None for m in detection.METRICS for model in ('CE', 'RCE')}
  cw_kept = {'CE': 0, 'RCE': 1}
  return [report_render.Table2Row('FGSM (eps 0.04)', aucs, kept, _success(kept, clean)),
          report_render.Table2Row('C&W', all_nc, cw_kept,
                                  _success(cw_kept, {'CE': 5, 'RCE': 4}))]


def test_table2_markdown_states_the_success_rate_and_defines_it():
  md = report_render.table2(_fake_rows(), title='mnist').markdown()
  header, rows = markdown_table(md, '| Attack')
  assert header[-4:] == ['kept CE', 'kept RCE', 'success CE', 'success RCE'], header
  assert rows[0][-4:] == ['3', '0', '%.4f' % (3 / 6), '-'], rows[0]
  assert rows[1][-4:] == ['0', '1', '0.0000', '0.2500'], rows[1]  # an all-n/c row: 0 success
  assert report_tables.TABLE2_SUCCESS_NOTE in md
  assert 'success' in report_tables.TABLE2_SUCCESS_NOTE and 'kept' in (
      report_tables.TABLE2_SUCCESS_NOTE)
  # rows without the clean-correct counts: no success columns, no note
  old = report_render.table2([r._replace(success=None) for r in _fake_rows()]).markdown()
  assert 'success' not in old and 'kept CE' in old


def test_table2_csv_has_the_success_columns_and_report_tables_reads_them():
  text = report_render.table2(_fake_rows()).csv()
  parsed = list(csv.DictReader(io.StringIO(text)))
  assert float(parsed[0]['success CE']) == 3 / 6 and parsed[0]['success RCE'] == ''
  assert float(parsed[1]['success CE']) == 0.0 and float(parsed[1]['success RCE']) == 0.25
  table = report_tables.table2_from_csv(text)
  columns = dict(table.columns)
  assert columns['success CE'] == columns['success RCE'] == '%.4f'
  assert columns['kept CE'] == '%d'
  heads = [h for h, _ in table.columns]
  cells = dict(table.rows)
  assert cells['FGSM (eps 0.04)'][heads.index('success CE')] == 0.5
  assert cells['FGSM (eps 0.04)'][heads.index('success RCE')] is report_tables.MISSING
  assert report_tables.TABLE2_SUCCESS_NOTE in table.notes
  md = table.markdown()
  assert '| 3 | 0 | 0.5000 | - |' in md and '| 0 | 1 | 0.0000 | 0.2500 |' in md
  # several seeds: mean +- s.d. of the rates, '-' stays '-'
  merged = report_tables.mean_sd_markdown([table, table])
  assert '| 3.0 ± 0.0 | 0.0 ± 0.0 | 0.5000 ± 0.0000 | - |' in merged, merged
  assert report_tables.TABLE2_SUCCESS_NOTE in merged
  per_seed = report_tables.per_seed_csv([0, 1], [[table], [table]])
  assert 'Table 2,FGSM (eps 0.04),success CE,1,0.5' in per_seed.splitlines()
  # a table2.csv of an older detect, without success columns, reads as before
  older = report_tables.table2_from_csv('Attack,Confidence CE,kept CE\nFGSM,0.5,3\n')
  assert report_tables.TABLE2_SUCCESS_NOTE not in older.notes


def test_success_rate():
  assert attack_evaluation.success_rate(3, 6) == 0.5
  assert attack_evaluation.success_rate(0, 0) is None
  assert (attack_evaluation.success_rate(None, 4) is None
          and attack_evaluation.success_rate(1, None) is None)


# ---- detect on hand-made results: the counts, the table and the figure ---------------------


def _write_fake_results(results, rng, n=40):
  """C&W results of both models: CE fools none of its 30 clean-correct images, RCE 12 of 35."""
  labels = np.arange(n) % 10
  wrong = {'CE': 10, 'RCE': 5}  # clean images misclassified: the first ones
  fooled = {'CE': 0, 'RCE': 12}  # clean-correct images whose adversarial one is wrong
  nor, adv = {}, {}
  for model in MODELS:
    nor[model] = labels.copy()
    nor[model][:wrong[model]] = (labels[:wrong[model]] + 1) % 10
    adv[model] = nor[model].copy()
    adv[model][wrong[model]:wrong[model] + fooled[model]] = (
        labels[wrong[model]:wrong[model] + fooled[model]] + 3) % 10
  save_hand_made_results(results, labels, nor, adv, rng)
  return {m: (fooled[m], n - wrong[m]) for m in MODELS}


def test_detect_reports_the_success_rate_and_draws_both_panels(tmp_path):
  results = str(tmp_path / 'results')
  hand = _write_fake_results(results, np.random.RandomState(0))
  text, per_attack = detect_report.detect(results, 'mnist', 1)
  for model, (kept, clean) in hand.items():
    assert per_attack['carliniL2'][model].n_kept == kept
    assert per_attack['carliniL2'][model].n_clean_correct == clean
    assert per_attack['carliniL2'][model].success_rate == kept / clean
  header, rows = markdown_table(text, '| Attack | Confidence')
  row = dict(zip(header, rows[0]))
  assert row['success CE'] == '0.0000' and row['success RCE'] == '%.4f' % (12 / 35), row
  assert [row['Confidence CE'], row['Confidence RCE'] != 'n/c'] == ['n/c', True], row
  assert report_tables.TABLE2_SUCCESS_NOTE in text
  out_dir = os.path.join(results, 'detect_mnist')
  with open(os.path.join(out_dir, 'table2.csv')) as f:
    table = report_tables.table2_from_csv(f.read())
  heads = [h for h, _ in table.columns]
  cells = table.rows[0][1]
  assert cells[heads.index('success CE')] == 0.0
  assert cells[heads.index('success RCE')] == pytest.approx(12 / 35)
  img = matplotlib.image.imread(os.path.join(out_dir, 'roc_carliniL2.png'))
  assert img.shape[1] > 1.3 * img.shape[0]  # the two panels, CE empty
