"""Table 6, adaptive attacks on the thresholded detectors, its detail table and Table 3's SR.

Renders rce.detection.adaptive_metrics' records as report_tables.Table (no score is computed
here). The input of every builder is one dict, per (detector, model) the cells of
adaptive_metrics.threat_model_columns:

  {(detector, model): {eps: {column: AdaptiveEvaluation or reason}}}

with detector one of DETECTORS' keys, model one of models.MODELS, column one of COLUMNS and
a reason (str) saying why the cell is not computable; a cell absent from the dict is n/c
with NO_RESULTS. The untargeted and the targeted threat model are two such dicts, two tables
of the same builders.
"""
import collections
import csv
import io

from rce.detection import adaptive_metrics
from rce.reports import report_tables
from rce.tables import attack_names
from rce.tables import models

# The detectors (keys of the input, attack_names.TABLE6_DETECTORS) and their row titles.
DETECTORS = (('k_density', 'K-density'), ('mahalanobis', 'Mahalanobis'), ('lid', 'LID'),
             ('supervised_k_density', 'supervised K-density'),
             ('supervised_lid', 'supervised LID'),
             ('supervised_mahalanobis', 'supervised Mahalanobis'),
             ('ensemble', 'ensemble (all six accept)'))
# The columns of each eps group and their titles.
COLUMNS = adaptive_metrics.ATTACKS + (adaptive_metrics.WORST_CASE,)
COLUMN_TITLES = {'oblivious': 'oblivious', 'lagrangian': 'Lagrangian',
                 'selective': 'Selective', 'orthogonal': 'Orthogonal',
                 adaptive_metrics.WORST_CASE: 'worst case'}
# Table 6 shows SR@5 (SR@50): the false-positive rates of its two numbers.
SHOWN_FPRS = (0.05, 0.5)
NO_RESULTS = 'no results'

TIE_NOTE = ('Scores are higher = more suspicious; an image is accepted when its score is at '
            'most the threshold, so a score equal to the threshold is accepted (the same rule '
            'fixes the thresholds on the clean calibration images).')
WORST_CASE_NOTE = ('worst case: per example, fooled by any of the four attacks at this eps '
                   'or at a smaller one (oblivious: the union of PGD with the ce, cw and hc '
                   'losses), so it is never below a single attack nor below a smaller eps.')


def sr_note(targeted):
  """What SR@5 (SR@50) means, untargeted or targeted."""
  success = 'classified as the target' if targeted else 'misclassified'
  return ('SR@5 (SR@50), in %%: the share of the clean-correct images accepted by the '
          'detector (clean image classified correctly and accepted) whose adversarial image '
          'is %s and accepted, at the threshold of a 5 %% (50 %%) false-positive rate on '
          'clean images.' % success)


def row_label(detector, model):
  """'K-density / RCE'."""
  return '%s / %s' % (dict(DETECTORS)[detector], model)


def column_header(eps, column):
  """'eps 0.1 oblivious'."""
  return 'eps %g %s' % (eps, COLUMN_TITLES[column])


def fpr_label(fpr):
  """'5' for 0.05: the false-positive rate in percent, as in SR@5."""
  return '%g' % (100.0 * fpr)


def not_computable_reason(fpr):
  """Why SR at fpr is n/c: no image is eligible at its threshold."""
  return ('no clean image both classified correctly and accepted at the %s %% threshold'
          % fpr_label(fpr))


def _percent(value):
  return report_tables.NOT_COMPUTABLE if value is None else '%.1f' % (100.0 * value)


def table6_cell(cell):
  """(text, reason) of one cell: 'SR@5 (SR@50)' in percent with one decimal, e.g. '12.3
  (45.6)'; text None (n/c) when neither rate is computable; reason None when both are."""
  if cell is None or isinstance(cell, str):
    return None, cell or NO_RESULTS
  rates = [cell.sr[fpr].value for fpr in SHOWN_FPRS]
  missing = [fpr for fpr, v in zip(SHOWN_FPRS, rates) if v is None]
  reason = not_computable_reason(missing[0]) if missing else None
  if len(missing) == len(rates):
    return None, reason
  return '%s (%s)' % tuple(_percent(v) for v in rates), reason


def _eps_of(cells):
  return sorted({eps for by_eps in cells.values() for eps in by_eps})


def _rows(cells=None):
  """(detector, model) in row order: every row, or (given `cells`) the final-feature
  detectors' and those of the other detectors with a cell (no calibration fitted them)."""
  shown = {d for d, _ in cells} if cells is not None else {d for d, _ in DETECTORS}
  return [(detector, model) for detector, _ in DETECTORS
          if detector in attack_names.ADAPTIVE_DETECTORS or detector in shown
          for model in models.MODELS]


def _check_keys(cells):
  unknown = sorted(set(cells) - set(_rows()))
  if unknown:
    raise ValueError('Table 6 has no row for %s (rows: detector in %s, model in %s)' % (
        unknown, [d for d, _ in DETECTORS], models.MODELS))
  for key, by_eps in cells.items():
    for eps, by_column in by_eps.items():
      extra = sorted(set(by_column) - set(COLUMNS))
      if extra:
        raise ValueError('%s at eps %g: unknown columns %s (expected %s)' % (
            row_label(*key), eps, extra, COLUMNS))


def reason_notes(reasons, headers):
  """One 'n/c: reason: row (columns); ...' line per distinct reason, in order of first use."""
  by_reason = collections.OrderedDict()
  for label, header, reason in reasons:
    by_reason.setdefault(reason, collections.OrderedDict()).setdefault(label, []).append(
        header)
  notes = []
  for reason, by_row in by_reason.items():
    notes.append('n/c: %s: %s.' % (reason, '; '.join(
        '%s (%s)' % (label, 'every column' if len(shown) == len(headers) and len(headers) > 1
                     else ', '.join(shown)) for label, shown in by_row.items())))
  return notes


def title(targeted, dataset=None):
  """Table 6's title, untargeted or targeted."""
  return 'Table 6: adaptive attacks on the detectors (%s, L-inf%s; SR@5 (SR@50) in %%)' % (
      'targeted' if targeted else 'untargeted', ', %s' % dataset if dataset else '')


def table6(cells, targeted, dataset=None):
  """Table 6 (report_tables.Table): rows detector x model, per eps the four attacks and the
  worst case, each cell SR@5 (SR@50) in percent; n/c cells' reasons in the notes.

  Args:
    cells: {(detector, model): {eps: {column: AdaptiveEvaluation or reason}}} (module doc).
    targeted: the threat model, for the title and the notes.
    dataset: the data set's name for the title, or None.
  """
  _check_keys(cells)
  all_eps = _eps_of(cells)
  keys = [(eps, column) for eps in all_eps for column in COLUMNS]
  headers = [column_header(eps, column) for eps, column in keys]
  rows, reasons = [], []
  for detector, model in _rows(cells):
    label, by_eps = row_label(detector, model), cells.get((detector, model), {})
    row = []
    for (eps, column), header in zip(keys, headers):
      text, reason = table6_cell(by_eps.get(eps, {}).get(column))
      row.append(text)
      if reason:
        reasons.append((label, header, reason))
    rows.append((label, row))
  notes = [sr_note(targeted), TIE_NOTE, WORST_CASE_NOTE] + reason_notes(reasons, headers)
  return report_tables.Table('Table 6 (%s)' % ('targeted' if targeted else 'untargeted'),
                             [(h, '%s') for h in headers], rows, first='Detector / model',
                             notes=notes, title=title(targeted, dataset))


def _detail_columns():
  columns = [('detector', '%s'), ('model', '%s'), ('eps', '%g'), ('attack', '%s'),
             ('images', '%d')]
  for fpr in adaptive_metrics.FPRS:
    at = fpr_label(fpr)
    columns += [('SR@%s' % at, '%.4f'), ('SR@%s low' % at, '%.4f'),
                ('SR@%s high' % at, '%.4f'), ('fooled @%s' % at, '%d'),
                ('eligible @%s' % at, '%d'), ('robust accuracy @%s' % at, '%.4f'),
                ('mean L-inf @%s' % at, '%.4f'), ('mean L2 @%s' % at, '%.4f')]
  return columns + [('plain success', '%.4f'), ('plain success low', '%.4f'),
                    ('plain success high', '%.4f'), ('n/c reason', '%s')]


def _detail_numbers(record):
  numbers = [record.n]
  for fpr in adaptive_metrics.FPRS:
    sr = record.sr[fpr]
    numbers += [sr.value, sr.low, sr.high, sr.k, sr.n, record.robust_accuracy[fpr].value,
                record.mean_l_inf[fpr], record.mean_l2[fpr]]
  plain = record.plain_success
  return numbers + [plain.value, plain.low, plain.high]


def table6_detail(cells, targeted, dataset=None):
  """Every number behind Table 6 (report_tables.Table; its CSV is the machine-readable
  record): per detector, model, eps and column, SR@1/5/50 with Wilson 95 % low and high,
  fooled and eligible counts, robust accuracy and mean distortions of the fooled at each
  false-positive rate, the plain success rate (no detector) with its interval, and why a
  cell is n/c. Rates are fractions in [0, 1]; None (n/c, 'nan' in the CSV) where undefined.
  """
  _check_keys(cells)
  all_eps = _eps_of(cells)
  columns = _detail_columns()
  rows = []
  for detector, model in _rows(cells):
    by_eps = cells.get((detector, model), {})
    for eps in all_eps:
      for column in COLUMNS:
        cell = by_eps.get(eps, {}).get(column)
        label = '%s / eps %g / %s' % (row_label(detector, model), eps, COLUMN_TITLES[column])
        head = [dict(DETECTORS)[detector], model, eps, COLUMN_TITLES[column]]
        if cell is None or isinstance(cell, str):
          numbers, reason = [None] * (len(columns) - len(head) - 1), cell or NO_RESULTS
        else:
          numbers, reason = _detail_numbers(cell), ''
        rows.append((label, head + numbers + [reason]))
  kind = 'targeted' if targeted else 'untargeted'
  return report_tables.Table(
      'Table 6 detail (%s)' % kind, columns, rows, first='Row',
      title='Table 6 in detail: adaptive attacks on the detectors (%s%s)' % (
          kind, ', %s' % dataset if dataset else ''),
      notes=[sr_note(targeted).replace(', in %', ''), TIE_NOTE, WORST_CASE_NOTE,
             'low, high: the Wilson 95 % interval; robust accuracy: the share of all images '
             'classified correctly and accepted whose adversarial image is rejected or '
             'unsuccessful; mean distortions over the fooled images (worst case and '
             'oblivious: the cheapest run that fools each image).'])


# The columns Table 3's C&W-wb rows gain (fractions, as Table 3's other rates).
TABLE3_SR_COLUMNS = (('SR@5', '%.4f'), ('SR@50', '%.4f'))
TABLE3_SR_NOTE = ('SR@5, SR@50: the share of the clean-correct images accepted by the '
                  'detector whose C&W-wb image is classified as the target and accepted, at '
                  'the threshold of a 5 % (50 %) false-positive rate on clean images.')


def table3_rescored(records):
  """Table 3's two new cells per model: {model: [SR@5, SR@50]} (fractions, None = n/c).

  Args:
    records: {model: AdaptiveEvaluation of C&W-wb (targeted), or None / a reason when
      missing}; the caller appends the cells to the model's Table 3 row under
      TABLE3_SR_COLUMNS.
  """
  return {model: [None if record is None or isinstance(record, str) else record.sr[fpr].value
                  for fpr in SHOWN_FPRS] for model, record in records.items()}


def table6_rates(detail_csv, fpr, targeted):
  """One rate of Table 6 as numbers (report_tables.Table), read back from detect's detail
  CSV: rows detector / model, columns eps x attack, cells SR@fpr as fractions (None: n/c).
  RESULTS.md averages it over seeds (the cells of `table6` are text)."""
  rows = list(csv.DictReader(io.StringIO(detail_csv)))
  key = 'SR@%s' % fpr_label(fpr)
  headers, cells = [], collections.OrderedDict()
  for row in rows:
    header = 'eps %g %s' % (float(row['eps']), row['attack'])
    if header not in headers:
      headers.append(header)
    label = '%s / %s' % (row['detector'], row['model'])
    value = row[key]
    cells.setdefault(label, {})[header] = None if value in ('', 'nan') else float(value)
  kind = 'targeted' if targeted else 'untargeted'
  return report_tables.Table(
      'Table 6 %s (%s)' % (key, kind), [(h, '%.4f') for h in headers],
      [(label, [by_header.get(h) for h in headers]) for label, by_header in cells.items()],
      first='Detector / model',
      notes=[sr_note(targeted).replace('SR@5 (SR@50), in %', key).replace(
          '5 % (50 %)', fpr_label(fpr) + ' %') + ' As a fraction; n/c: see detect\'s '
          'table6%s_detail.csv.' % ('_targeted' if targeted else '')])
