"""The report's tables as data: one replica's Markdown and CSV, and mean +- s.d. over seeds.

Every table of the reports is a `Table`: detect's Tables 2, 4 and 5, its thresholding test and
per-example scores, and reproduce's Tables 1-5, which it reads back from detect's CSVs. One
seed renders them as they always were, several seeds render every numeric cell as mean +-
standard deviation (n - 1) and list each seed's value in a CSV, so that a difference between
CE and RCE can be told from seed-to-seed noise. TensorFlow-free.
"""
import csv
import io
import math

import numpy as np


class _Missing(str):
  """The type of MISSING: a '-' that a cell holding the text '-' is not (`is` tells them
  apart), so that the CSV leaves only the missing cells empty."""
  __slots__ = ()


# A cell with no result (the detect table's '-'), as opposed to None: not computable (n/c).
MISSING = _Missing('-')
NOT_COMPUTABLE = 'n/c'
# Table 2's count and rate columns, per model (report_render writes them, reproduce reads them).
KEPT_COLUMN = 'kept %s'
SUCCESS_COLUMN = 'success %s'
# The footnotes of Table 2's n/c cells and of its success columns (detect's table2.md; the
# n/c one ends with a full stop in the tables read back from table2.csv).
TABLE2_NC_NOTE = 'n/c: not computable (fewer than two kept examples or only one class)'
TABLE2_SUCCESS_NOTE = ('success: the attack\'s success rate, the share of the clean-correct '
                       'images (classified correctly) whose adversarial image is misclassified '
                       '(- when no image is classified correctly); these are the kept examples, '
                       'over which the AUCs are computed.')


class Table(object):
  """A report table: `columns` are (header, printf format) pairs, `rows` (label, cells);
  a cell is a number, a string, None (not computable) or MISSING.

  `first` heads the label column; `title`, when given, heads the Markdown ('### title');
  `notes` follow the Markdown table, a paragraph each; `csv_only` names columns that the CSV
  keeps and the Markdown leaves out (Table 2's counts, when the rows have none).
  """

  def __init__(self, name, columns, rows, first='Model', notes=None, title=None,
               csv_only=()):
    self.name, self.columns, self.rows, self.first = name, list(columns), list(rows), first
    self.notes, self.title, self.csv_only = list(notes or []), title, tuple(csv_only)

  def _lines(self, cells_of_row):
    shown = [i for i, (h, _) in enumerate(self.columns) if h not in self.csv_only]
    lines = ['### %s' % self.title, ''] if self.title else []
    lines += ['| %s |' % ' | '.join([self.first] + [self.columns[i][0] for i in shown]),
              '|' + '---|' * (len(shown) + 1)]
    for label, cells in self.rows:
      row = cells_of_row(label, cells)
      lines.append('| %s |' % ' | '.join([label] + [row[i] for i in shown]))
    return '\n'.join(lines) + ''.join('\n\n' + n for n in self.notes) + '\n'

  def markdown(self):
    """One replica's table: each cell in its column's format, n/c or -."""
    return self._lines(lambda _, cells: [format_cell(fmt, v) for (_, fmt), v in
                                         zip(self.columns, cells)])

  def csv(self):
    """The table as CSV, every column: full precision, 'nan' for not computable, empty for
    missing."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator='\n')
    writer.writerow([self.first] + [h for h, _ in self.columns])
    for label, cells in self.rows:
      writer.writerow([label] + ['nan' if v is None else '' if v is MISSING else _csv_value(v)
                                 for v in cells])
    return buf.getvalue()


def format_cell(fmt, value):
  if value is None:
    return NOT_COMPUTABLE
  if isinstance(value, str):
    return value
  return fmt % value


def _is_number(value):
  return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def mean_sd_cell(fmt, values):
  """The cell of `values` (one per seed): mean +- s.d. (n - 1) of the numbers; strings
  that differ joined with ' / '; n/c or - when no seed has a number."""
  numbers = [float(v) for v in values if _is_number(v)]
  if not numbers:
    strings = [v for v in values if isinstance(v, str) and v != MISSING]
    if strings:
      return ' / '.join(sorted(set(strings), key=strings.index))
    return NOT_COMPUTABLE if any(v is None for v in values) else MISSING
  fmt = '%.1f' if fmt == '%d' else fmt  # the mean of counts is not a count
  mean = float(np.mean(numbers))
  sd = float(np.std(numbers, ddof=1)) if len(numbers) > 1 else math.nan
  cell = '%s ± %s' % (fmt % mean, fmt % sd if len(numbers) > 1 else 'n/a')
  if len(numbers) < len(values):
    cell += ' (%d of %d seeds; n/c in the others)' % (len(numbers), len(values))
  return cell


def mean_sd_markdown(tables):
  """One Markdown table from the same table of several seeds (same rows and columns)."""
  first = tables[0]
  for other in tables[1:]:
    if ([label for label, _ in other.rows] != [label for label, _ in first.rows]
        or other.columns != first.columns):
      raise ValueError('%s differs between the seeds: rows %s vs %s' % (
          first.name, [r for r, _ in first.rows], [r for r, _ in other.rows]))
  by_label = [dict(t.rows) for t in tables]
  merged = Table(first.name, first.columns, first.rows, first.first, first.notes, first.title,
                 first.csv_only)
  return merged._lines(lambda label, cells: [  # pylint: disable=protected-access
      mean_sd_cell(fmt, [rows[label][i] for rows in by_label])
      for i, (_, fmt) in enumerate(first.columns)])


def _csv_value(value):
  if value is None:
    return NOT_COMPUTABLE
  if _is_number(value):
    return repr(float(value)) if isinstance(value, (float, np.floating)) else str(int(value))
  return str(value)


def per_seed_csv(seeds, tables_per_seed):
  """Long CSV (table, row, column, seed, value) of every cell of every seed's tables."""
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator='\n')
  writer.writerow(['table', 'row', 'column', 'seed', 'value'])
  for seed, tables in zip(seeds, tables_per_seed):
    for table in tables:
      for label, cells in table.rows:
        for (header, _), value in zip(table.columns, cells):
          writer.writerow([table.name, label, header, seed, _csv_value(value)])
  return buf.getvalue()


def from_csv(name, text, notes=()):
  """A Table from its CSV (`Table.csv`, detect's table2.csv): 'nan' is n/c, empty missing;
  a column whose values are all integers is a count ('%d'), any other '%.4f'."""
  rows = list(csv.reader(io.StringIO(text)))
  header, body = rows[0], rows[1:]
  values = [[_parse(c) for c in row[1:]] for row in body]
  columns = []
  for i, head in enumerate(header[1:]):
    numbers = [row[i] for row in values if _is_number(row[i])]
    counts = numbers and all(isinstance(v, int) for v in numbers)
    columns.append((head, '%d' if counts else '%.4f'))
  return Table(name, columns, [(row[0], cells) for row, cells in zip(body, values)],
               first=header[0], notes=notes)


def _parse(cell):
  if cell == '':
    return MISSING
  if cell == 'nan':
    return None
  try:
    return int(cell)
  except ValueError:
    return float(cell)


def table2_from_csv(text):
  """Table 2 from the detect folder's table2.csv: AUCs, kept counts and success rates.

  The success columns are fractions in [0, 1] ('%.4f'), empty (missing) where a model had no
  clean-correct image; the notes define them when the CSV has them (older ones do not).
  """
  notes = [TABLE2_NC_NOTE + '.']
  success = SUCCESS_COLUMN % ''
  if any(h.startswith(success) for h in next(csv.reader(io.StringIO(text)), [])):
    notes.append(TABLE2_SUCCESS_NOTE)
  table = from_csv('Table 2', text, notes)
  # a rate, not a count, even when every seed's value happens to be written as 0 or 1
  table.columns = [(h, '%.4f' if h.startswith(success) else fmt) for h, fmt in table.columns]
  return table
