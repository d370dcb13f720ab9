"""detect's adaptive part: Table 6 (untargeted, targeted), its detail CSVs, Table 7 (transfer
between the detectors, one table per eps) with its detail CSV and the SR@5 / SR@50 of C&W-wb
that Table 3 gains, from adaptive_evaluation's records."""
from rce.reports import report_tables
from rce.reports import table6_report
from rce.reports import table7_report
from rce.tables import models

# detect's file names: {file: what} (RESULTS.md reads table3_sr.csv back).
TABLE3_SR_FILE = 'table3_sr.csv'
TABLE7_DETAIL_FILE = 'table7_detail.csv'


def _suffix(targeted):
  return '_targeted' if targeted else ''


def table3_sr(wb):
  """Table 3's SR@5 and SR@50 of C&W-wb per model (report_tables.Table)."""
  cells = table6_report.table3_rescored(wb or {})
  rows = [(m, cells[m]) for m in models.MODELS if m in cells]
  return report_tables.Table('Table 3 SR', list(table6_report.TABLE3_SR_COLUMNS), rows,
                             notes=[table6_report.TABLE3_SR_NOTE])


def files(adaptive, dataset):
  """[(file name, text)] of the adaptive part and its Markdown, from AdaptiveResults."""
  out, markdown = [], []
  for targeted in (False, True):
    cells = adaptive.cells[targeted]
    if not cells:
      continue
    table = table6_report.table6(cells, targeted, dataset)
    detail = table6_report.table6_detail(cells, targeted, dataset)
    out += [('table6%s.csv' % _suffix(targeted), table.csv()),
            ('table6%s_detail.csv' % _suffix(targeted), detail.csv())]
    markdown.append(table.markdown())
  transfer = adaptive.transfer[False]  # untargeted: the threat model every detector faces
  if transfer:
    out.append((TABLE7_DETAIL_FILE, table7_report.table7_detail(transfer, False,
                                                                dataset).csv()))
    markdown.append(table7_report.markdown(transfer, False, dataset))
  if adaptive.wb:
    sr = table3_sr(adaptive.wb)
    out.append((TABLE3_SR_FILE, sr.csv()))
    markdown.append('### C&W-wb at the calibrated K-density thresholds\n\n' + sr.markdown())
  text = '\n'.join(markdown)
  out.append(('table6.md', text))
  return out, text
