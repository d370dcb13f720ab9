"""Table 7, transfer between the detectors: every adaptive run scored by every detector.

Each Table 6 attack run's final images are scored by every detector of the same model at its
5 % false-positive threshold, so that one reads how far an attack tuned against detector A
fools detector B (the diagonal, B = A, is the attack against the detector that scores it).
Renders rce.detection.adaptive_metrics' records as report_tables.Table (no score is computed
here; the only arithmetic is adaptive_metrics.combine and counting masks). The input, built by
rce.detection.adaptive_evaluation, is one dict per threat model:

  {model: {(column, attacked): {scored_by: {eps: AdaptiveEvaluation or reason}}}}

with model one of models.MODELS, column one of attack_names.ADAPTIVE_COLUMNS, attacked the
detector a detector-aware run was tuned against (one of DETECTORS; None for the oblivious
column, whose record is already the union of its three PGD losses), scored_by one of
DETECTORS and a reason (str) saying why a record is not computable. Any key may be missing
(a run that was not made): its cells are n/c with the reason. TensorFlow-free.
"""
import numpy as np

from rce.detection import adaptive_metrics
from rce.reports import report_tables
from rce.reports import table6_report
from rce.tables import attack_names
from rce.tables import models

# The detectors, as attacked (columns) and as scoring (rows), in Table 6's order.
DETECTORS = attack_names.TABLE6_DETECTORS
# Table 6's titles; the ensemble's is short in the columns ('vs ensemble') and the CSV.
ENSEMBLE_ROW_TITLE = dict(table6_report.DETECTORS)[attack_names.ENSEMBLE]
DETECTOR_TITLES = dict(table6_report.DETECTORS, **{attack_names.ENSEMBLE: 'ensemble'})
OBLIVIOUS = 'oblivious'
# The detector-aware columns, whose per-example union is the cell of "tuned against A".
TUNED_COLUMNS = tuple(c for c in attack_names.ADAPTIVE_COLUMNS if c != OBLIVIOUS)
TUNED_UNION = 'tuned union'
ATTACK_TITLES = dict(table6_report.COLUMN_TITLES, **{TUNED_UNION: TUNED_UNION})
# Table 7's one false-positive rate: SR@5.
SHOWN_FPR = 0.05
SR = 'SR@%s' % table6_report.fpr_label(SHOWN_FPR)
FIRST = 'Scored by / model'
DETAIL_FIRST = 'Row'
ON_ENSEMBLE = '%s on ensemble images' % SR

UNION_NOTE = ('vs A: per example, fooled by any of the Lagrangian, Selective and Orthogonal '
              'PGD runs tuned against A at this eps (the attacker tuned against A at its '
              'best; n/c unless all three were run); oblivious: the union of PGD with the '
              'ce, cw and hc losses, which never ask a detector.')
DIAGONAL_NOTE = ('Rows: the detector B that scores the final images, per model; columns: '
                 'the detector A the attack was tuned against. The diagonal (B = A) is the '
                 'attack against the detector that scores it; off it, how far an attack on A '
                 'transfers to B.')
ENSEMBLE_NOTE = ('ensemble: an image is accepted only when every one of the six detectors '
                 'accepts it, each at its own 5 %% threshold, so its false-positive rate on '
                 'clean images is higher than 5 %% (at most 30 %%, the six together). Its SR '
                 'counts only the images that every detector accepts clean (and that are '
                 'classified correctly); the detail CSV\'s "%s" gives each detector\'s SR on '
                 'those same images, never below the ensemble\'s.' % ON_ENSEMBLE)


def sr_note(targeted):
  """What SR@5 means here (table6_report.sr_note at the one rate, the row's detector)."""
  success = 'classified as the target' if targeted else 'misclassified'
  return ('%s, in %%: the share of the clean-correct images accepted by the row\'s detector '
          '(clean image classified correctly and accepted) whose final adversarial image is '
          '%s and accepted by it, at its threshold of a 5 %% false-positive rate on clean '
          'images.' % (SR, success))


def detector_title(detector):
  """'K-density', ..., 'ensemble'."""
  return DETECTOR_TITLES[detector]


def row_label(scored_by, model):
  """'K-density / RCE', 'ensemble (all six accept) / CE'."""
  name = ENSEMBLE_ROW_TITLE if scored_by == attack_names.ENSEMBLE else DETECTOR_TITLES[
      scored_by]
  return '%s / %s' % (name, model)


def column_header(attacked):
  """'oblivious' for None, else 'vs LID'."""
  return OBLIVIOUS if attacked is None else 'vs %s' % DETECTOR_TITLES[attacked]


def _rows():
  """(scored_by, model) in row order: by model, then by detector, so that each model's block
  is a square matrix of scoring x attacked detectors with its diagonal in view."""
  return [(scored_by, model) for model in models.MODELS for scored_by in DETECTORS]


def _run_title(column):
  return '%s PGD' % ATTACK_TITLES[column]


def _check_keys(transfer):
  unknown = sorted(set(transfer) - set(models.MODELS), key=str)
  if unknown:
    raise ValueError('Table 7 has no model %s (models: %s)' % (unknown, models.MODELS))
  for model, by_run in transfer.items():
    for key, by_scorer in by_run.items():
      if not isinstance(key, tuple) or len(key) != 2:
        raise ValueError('%s: a run is keyed (column, attacked), got %r' % (model, key))
      column, attacked = key
      if column not in attack_names.ADAPTIVE_COLUMNS:
        raise ValueError('%s: unknown column %r (expected one of %s)' % (
            model, column, attack_names.ADAPTIVE_COLUMNS))
      if column == OBLIVIOUS and attacked is not None:
        raise ValueError('%s: the oblivious column attacks no detector, got %r' % (
            model, attacked))
      if column != OBLIVIOUS and attacked not in DETECTORS:
        raise ValueError('%s: %s run against unknown detector %r (expected one of %s)' % (
            model, column, attacked, DETECTORS))
      extra = sorted(set(by_scorer) - set(DETECTORS), key=str)
      if extra:
        raise ValueError('%s: %s run scored by unknown detectors %s (expected %s)' % (
            model, column, extra, DETECTORS))


def all_eps(transfer):
  """The eps of any record of `transfer`, ascending."""
  return sorted({eps for by_run in transfer.values() for by_scorer in by_run.values()
                 for by_eps in by_scorer.values() for eps in by_eps})


def _lookup(by_run, column, attacked, scored_by, eps):
  """The record of one run scored by one detector at eps, or why there is none (str)."""
  by_scorer = by_run.get((column, attacked))
  if by_scorer is None:
    return 'no %s run' % _run_title(column)
  if scored_by not in by_scorer:
    return 'the %s run is not scored by this detector' % _run_title(column)
  record = by_scorer[scored_by].get(eps)
  if record is None:
    return 'no %s run at this eps' % _run_title(column)
  return record


def _is_record(record):
  return isinstance(record, adaptive_metrics.AdaptiveEvaluation)


def tuned_union(by_column):
  """(record, reason) of "tuned against A" scored by B at one eps: the per-example union
  (adaptive_metrics.combine) of the Lagrangian, Selective and Orthogonal runs.

  Args:
    by_column: {column: AdaptiveEvaluation, a reason (str) or None} over TUNED_COLUMNS, the
      runs against A scored by B at one eps; an absent column is a run not made.

  Returns:
    (AdaptiveEvaluation named TUNED_UNION, None), or (None, reason) naming the missing runs:
    a union without one of them would understate the attacker.
  """
  extra = sorted(set(by_column) - set(TUNED_COLUMNS))
  if extra:
    raise ValueError('the tuned union joins %s, not %s' % (TUNED_COLUMNS, extra))
  records = [by_column.get(c) for c in TUNED_COLUMNS]
  reasons = [r if isinstance(r, str) else 'no %s run' % _run_title(c)
             for c, r in zip(TUNED_COLUMNS, records) if not _is_record(r)]
  if reasons:
    return None, ' and '.join(reasons)
  return adaptive_metrics.combine(records, TUNED_UNION), None


def sr_cell(record):
  """(text, reason) of one record: SR@5 in percent with one decimal ('12.3'), or text None
  (n/c) with the reason, when the record is a reason, missing or has no eligible image."""
  if not _is_record(record):
    return None, record or table6_report.NO_RESULTS
  value = record.sr[SHOWN_FPR].value
  if value is None:
    return None, table6_report.not_computable_reason(SHOWN_FPR)
  return '%.1f' % (100.0 * value), None


def tuned_cell(by_column):
  """(text, reason) of the cell "tuned against A" (tuned_union, then sr_cell)."""
  record, reason = tuned_union(by_column)
  return sr_cell(record) if reason is None else (None, reason)


def _tuned_columns(by_run, attacked, scored_by, eps):
  return {c: _lookup(by_run, c, attacked, scored_by, eps) for c in TUNED_COLUMNS}


def _cell_record(by_run, attacked, scored_by, eps):
  """(record, reason) of Table 7's cell: the oblivious record or the tuned union."""
  if attacked is None:
    record = _lookup(by_run, OBLIVIOUS, None, scored_by, eps)
    return (record, None) if _is_record(record) else (None, record)
  return tuned_union(_tuned_columns(by_run, attacked, scored_by, eps))


def _kind(targeted):
  return 'targeted' if targeted else 'untargeted'


def title(targeted, eps, dataset=None):
  """Table 7's title at one eps."""
  return ('Table 7: transfer, attack tuned against A scored by B at 5 %% FPR (%s, eps %g%s; '
          '%s in %%)' % (_kind(targeted), eps, ', %s' % dataset if dataset else '', SR))


def table7(transfer, targeted, eps, dataset=None):
  """Table 7 at one eps (report_tables.Table): SR@5 in percent of every run scored by every
  detector of the same model; n/c cells' reasons in the notes.

  Rows 'B / model' grouped by model (CE's seven detectors, then RCE's), in DETECTORS order
  within each, so that each model's block is a square matrix whose diagonal (B = A) is the
  attack against the detector that scores it; columns 'oblivious', then 'vs A' for A in
  DETECTORS (the union of the three detector-aware runs tuned against A).

  Args:
    transfer: {model: {(column, attacked): {scored_by: {eps: record}}}} (module doc).
    targeted: the threat model, for the title and the notes.
    eps: the L-inf budget of the table.
    dataset: the data set's name for the title, or None.
  """
  _check_keys(transfer)
  attacked_order = (None,) + DETECTORS
  headers = [column_header(a) for a in attacked_order]
  rows, reasons = [], []
  for scored_by, model in _rows():
    label, by_run = row_label(scored_by, model), transfer.get(model, {})
    row = []
    for attacked, header in zip(attacked_order, headers):
      record, reason = _cell_record(by_run, attacked, scored_by, eps)
      text, reason = (None, reason) if reason else sr_cell(record)
      row.append(text)
      if reason:
        reasons.append((label, header, reason))
    rows.append((label, row))
  # Table 6's n/c notes, so that both tables word their reasons alike
  notes = [sr_note(targeted), DIAGONAL_NOTE, UNION_NOTE, ENSEMBLE_NOTE,
           table6_report.TIE_NOTE] + table6_report.reason_notes(reasons, headers)
  return report_tables.Table('Table 7 (%s, eps %g)' % (_kind(targeted), eps),
                             [(h, '%s') for h in headers], rows, first=FIRST, notes=notes,
                             title=title(targeted, eps, dataset))


def markdown(transfer, targeted, dataset=None):
  """One Table 7 per eps of `transfer`, ascending, as Markdown ('' without any record)."""
  return '\n'.join(table7(transfer, targeted, eps, dataset).markdown()
                   for eps in all_eps(transfer))


def _detail_columns():
  return [('model', '%s'), ('eps', '%g'), ('attack', '%s'), ('attacked detector', '%s'),
          ('scored by', '%s'), ('images', '%d'), (SR, '%.4f'), ('%s low' % SR, '%.4f'),
          ('%s high' % SR, '%.4f'), ('fooled @5', '%d'), ('eligible @5', '%d'),
          (ON_ENSEMBLE, '%.4f'), ('fooled on ensemble images @5', '%d'),
          ('ensemble images @5', '%d'), ('n/c reason', '%s')]


def on_ensemble_images(record, ensemble):
  """(k, n) of `record` on the ensemble's images: n the ensemble's eligible images at 5 %
  of the same run and eps, k the record's fooled among them; None when `ensemble` is not a
  record or has no eligible image.

  Raises:
    ValueError: the two records are not of the same images.
  """
  if not _is_record(record) or not _is_record(ensemble):
    return None
  if record.n != ensemble.n or not np.array_equal(record.clean_correct,
                                                  ensemble.clean_correct):
    raise ValueError('%s (eps %s) and its ensemble record are not of the same images' % (
        record.attack, record.eps))
  eligible = ensemble.eligible[SHOWN_FPR]
  if not eligible.any():
    return None
  return int((record.fooled[SHOWN_FPR] & eligible).sum()), int(eligible.sum())


def _detail_numbers(record, ensemble):
  """The numbers of one detail row and its n/c reason."""
  if not _is_record(record):
    return [None] * (len(_detail_columns()) - 6), record or table6_report.NO_RESULTS
  sr = record.sr[SHOWN_FPR]
  counts = on_ensemble_images(record, ensemble)
  on = [None, None, None] if counts is None else [float(counts[0]) / counts[1]] + list(counts)
  reason = '' if sr.n else table6_report.not_computable_reason(SHOWN_FPR)
  return [record.n, sr.value, sr.low, sr.high, sr.k, sr.n] + on, reason


def _detail_runs(by_run):
  """(column, attacked) in detail order: oblivious, then per attacked detector its three
  runs and their union (TUNED_UNION)."""
  runs = [(OBLIVIOUS, None)] if (OBLIVIOUS, None) in by_run else []
  for attacked in DETECTORS:
    present = [(c, attacked) for c in TUNED_COLUMNS if (c, attacked) in by_run]
    runs += present + ([(TUNED_UNION, attacked)] if present else [])
  return runs


def _detail_record(by_run, column, attacked, scored_by, eps):
  """The record of a detail row (the union for TUNED_UNION), a reason, or None (absent)."""
  if column != TUNED_UNION:
    return by_run.get((column, attacked), {}).get(scored_by, {}).get(eps)
  if all(by_run.get((c, attacked), {}).get(scored_by, {}).get(eps) is None
         for c in TUNED_COLUMNS):
    return None
  record, reason = tuned_union(_tuned_columns(by_run, attacked, scored_by, eps))
  return record if reason is None else reason


def table7_detail(transfer, targeted, dataset=None):
  """Every number behind Table 7 (report_tables.Table; its CSV is the machine-readable
  record): one row per (model, eps, column, attacked, scored_by) of the input, and per
  attacked detector a TUNED_UNION row (the table's cell; n/c with the reason when a run is
  missing), with the images, SR@5 and its Wilson 95 % interval, the fooled and eligible
  counts, and SR@5 on the ensemble's images of the same run and eps (k / n, n the images
  that every detector accepts clean; the ensemble's own row: its SR@5). Rates are fractions
  in [0, 1]; None (n/c, 'nan' in the CSV) where undefined.

  Rows in order: model (models.MODELS), eps ascending, the runs (oblivious, then per
  attacked detector in DETECTORS order its Lagrangian, Selective and Orthogonal runs and
  their union), the scoring detector (DETECTORS).
  """
  _check_keys(transfer)
  rows = []
  for model in models.MODELS:
    by_run = transfer.get(model, {})
    for eps in all_eps(transfer):
      for column, attacked in _detail_runs(by_run):
        ensemble = _detail_record(by_run, column, attacked, attack_names.ENSEMBLE, eps)
        for scored_by in DETECTORS:
          record = _detail_record(by_run, column, attacked, scored_by, eps)
          if record is None:
            continue
          attacked_title = '' if attacked is None else DETECTOR_TITLES[attacked]
          label = '%s / eps %g / %s%s / scored by %s' % (
              model, eps, ATTACK_TITLES[column],
              ' vs %s' % attacked_title if attacked_title else '', DETECTOR_TITLES[scored_by])
          numbers, reason = _detail_numbers(record, ensemble)
          rows.append((label, [model, eps, ATTACK_TITLES[column], attacked_title,
                               DETECTOR_TITLES[scored_by]] + numbers + [reason]))
  return report_tables.Table(
      'Table 7 detail (%s)' % _kind(targeted), _detail_columns(), rows, first=DETAIL_FIRST,
      title='Table 7 in detail: every adaptive run scored by every detector (%s%s)' % (
          _kind(targeted), ', %s' % dataset if dataset else ''),
      notes=[sr_note(targeted).replace(', in %', ''), UNION_NOTE, ENSEMBLE_NOTE,
             table6_report.TIE_NOTE,
             'low, high: the Wilson 95 %% interval; %s: fooled on ensemble images @5 / '
             'ensemble images @5, the images of the same run and eps that are classified '
             'correctly and that every detector accepts clean.' % ON_ENSEMBLE])
