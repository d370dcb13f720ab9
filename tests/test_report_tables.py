"""report_tables: one replica's cells as they always were, mean +- s.d. over seeds, the CSV."""
import numpy as np
import pytest

from rce.reports import report_tables
from rce.reports.report_tables import MISSING, Table


def test_mean_sd_cell_of_numbers_counts_not_computable_and_strings():
  assert report_tables.mean_sd_cell('%.4f', [0.9, 0.95]) == '%.4f ± %.4f' % (
      0.925, np.std([0.9, 0.95], ddof=1))
  assert report_tables.mean_sd_cell('%.2f %%', [1.0, 2.0, 3.0]) == '2.00 % ± 1.00 %'
  assert report_tables.mean_sd_cell('%d', [44, 47]) == '45.5 ± 2.1'  # counts: one decimal
  assert report_tables.mean_sd_cell('%.4f', [0.5, None, 0.7]) == (
      '0.6000 ± 0.1414 (2 of 3 seeds; n/c in the others)')
  assert report_tables.mean_sd_cell('%.4f', [None, 0.7]) == (
      '0.7000 ± n/a (1 of 2 seeds; n/c in the others)')
  assert report_tables.mean_sd_cell('%.4f', [None, None]) == 'n/c'
  assert report_tables.mean_sd_cell('%.4f', [MISSING, MISSING]) == '-'
  assert report_tables.mean_sd_cell('%s', ['ab', 'cd', 'ab']) == 'ab / cd'


def test_one_replica_markdown_and_the_csv_round_trip():
  table = Table('Table 3', [('ratio', '%.4f'), ('counted', '%d')],
                [('CE', [0.25, 12]), ('RCE', [None, 0])], notes=['A note.'])
  assert table.markdown() == ('| Model | ratio | counted |\n|---|---|---|\n'
                              '| CE | 0.2500 | 12 |\n| RCE | n/c | 0 |\n\nA note.\n')
  csv_text = report_tables.per_seed_csv([0, 3], [[table], [table]])
  lines = csv_text.splitlines()
  assert lines[0] == 'table,row,column,seed,value'
  assert 'Table 3,CE,ratio,3,0.25' in lines and 'Table 3,RCE,ratio,0,n/c' in lines
  assert len(lines) == 1 + 2 * 4


def test_table2_from_detect_csv_keeps_nc_and_missing_apart():
  text = ('Attack,Confidence CE,Confidence RCE,kept CE,kept RCE\n'
          'FGSM (eps 0.02),0.75,nan,44,48\nC&W,,0.5,,9\n')
  table = report_tables.table2_from_csv(text)
  assert table.first == 'Attack'
  assert table.rows == [('FGSM (eps 0.02)', [0.75, None, 44, 48]),
                        ('C&W', [MISSING, 0.5, MISSING, 9])]
  merged = report_tables.mean_sd_markdown([table, table])
  assert '| FGSM (eps 0.02) | 0.7500 ± 0.0000 | n/c | 44.0 ± 0.0 | 48.0 ± 0.0 |' in merged
  assert '| C&W | - | 0.5000 ± 0.0000 | - | 9.0 ± 0.0 |' in merged


def test_seeds_with_different_rows_are_refused():
  a = Table('Table 2', [('x', '%.4f')], [('FGSM', [0.5])], first='Attack')
  b = Table('Table 2', [('x', '%.4f')], [('BIM', [0.5])], first='Attack')
  with pytest.raises(ValueError, match='Table 2 differs between the seeds'):
    report_tables.mean_sd_markdown([a, b])


def test_title_csv_only_columns_and_a_dash_that_is_not_missing():
  table = Table('Table 9', [('a', '%.2f'), ('b', '%d'), ('c', '%s')],
                [('x', [0.5, MISSING, '-']), ('y', [None, 3, 'z'])], first='Row',
                notes=['A note.'], title='A title', csv_only=['b'])
  assert table.markdown() == ('### A title\n\n| Row | a | c |\n|---|---|---|\n'
                              '| x | 0.50 | - |\n| y | n/c | z |\n\nA note.\n')
  # the CSV keeps column b; only the MISSING cell is empty, the text '-' stays
  assert table.csv() == 'Row,a,b,c\nx,0.5,,-\ny,nan,3,z\n'
  merged = report_tables.mean_sd_markdown([table, table])
  assert merged.splitlines()[:3] == ['### A title', '', '| Row | a | c |'], merged
  assert '| x | 0.50 ± 0.00 | - |' in merged and '| y | n/c | z |' in merged, merged
