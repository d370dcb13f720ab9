"""adaptive_metrics and table6_report: SR@fpr, Wilson intervals, the worst case, Table 6."""
import csv
import io

import numpy as np
import pytest

from rce.detection import adaptive_metrics as am
from rce.reports import table6_report
from rce.tables import attack_names

ACCEPT_ALL = {fpr: 1e9 for fpr in am.FPRS}


def _evaluate(clean_correct, clean_score, adv_success, adv_score, thresholds, l_inf=None,
              l2=None, **kwargs):
  n = len(clean_correct)
  l_inf = np.full(n, 0.1) if l_inf is None else l_inf
  l2 = np.full(n, 1.0) if l2 is None else l2
  return am.evaluate(clean_correct, clean_score, adv_success, adv_score, thresholds, l_inf,
                     l2, **kwargs)


def test_wilson_interval_known_values_and_exact_edges():
  low, high = am.wilson_interval(5, 10)
  assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
  low, high = am.wilson_interval(0, 10)
  assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
  low, high = am.wilson_interval(10, 10)
  assert low == pytest.approx(0.7225, abs=1e-4) and high == 1.0
  assert am.wilson_interval(0, 0) is None
  with pytest.raises(ValueError):
    am.wilson_interval(11, 10)
  assert am.rate(0, 0) == am.Rate(0, 0, None, None, None)
  assert am.rate(5, 10).value == 0.5


def test_a_detector_accepting_everything_gives_the_plain_success_rate():
  rng = np.random.RandomState(0)
  clean_correct, adv_success = rng.rand(200) < 0.9, rng.rand(200) < 0.6
  record = _evaluate(clean_correct, rng.randn(200), adv_success, rng.randn(200), ACCEPT_ALL)
  for fpr in am.FPRS:
    assert record.sr[fpr] == record.plain_success
  assert record.plain_success.k == int((clean_correct & adv_success).sum())
  assert record.plain_success.n == int(clean_correct.sum())


def test_a_score_equal_to_the_threshold_is_accepted():
  ones = np.ones(3, bool)
  fooled, eligible = am.success_at(ones, [0.5, 0.5, 0.5], ones, [0.4, 0.5, 0.6], 0.5)
  assert eligible.tolist() == [True, True, True]
  assert fooled.tolist() == [True, True, False]
  _, eligible = am.success_at(ones, [0.5, np.nextafter(0.5, 1), 0.0], ones, [0, 0, 0], 0.5)
  assert eligible.tolist() == [True, False, True]


def test_sr_robust_accuracy_and_distortions_by_hand():
  # image:           0     1      2      3      4      5
  clean_correct = [True, True, True, True, False, True]
  clean_score = [0.1, 0.2, 0.3, 0.9, 0.1, 0.1]  # 3 rejected at 0.5
  adv_success = [True, True, False, True, True, True]
  adv_score = [0.2, 0.8, 0.1, 0.1, 0.1, 0.5]  # 1 rejected; 5 on the threshold: accepted
  l_inf, l2 = [0.1, 0.2, 0.3, 0.4, 0.5, 0.3], [1.0, 2.0, 3.0, 4.0, 5.0, 2.0]
  thresholds = {0.01: 0.95, 0.05: 0.5, 0.5: 0.15}
  record = _evaluate(clean_correct, clean_score, adv_success, adv_score, thresholds, l_inf,
                     l2, attack='lagrangian', eps=0.3)
  # at 0.5: eligible 0, 1, 2, 5; fooled 0 and 5 -> SR 2/4; robust: 1 and 2 -> 2/6
  assert record.sr[0.05][:2] == (2, 4) and record.sr[0.05].value == 0.5
  assert record.robust_accuracy[0.05][:3] == (2, 6, 2 / 6.)
  assert record.mean_l_inf[0.05] == pytest.approx(0.2) and record.mean_l2[0.05] == 1.5
  # at 0.95: eligible 0, 1, 2, 3, 5; fooled 0, 1, 3, 5; robust: 2 -> 1/6
  assert record.sr[0.01][:2] == (4, 5) and record.robust_accuracy[0.01][:2] == (1, 6)
  # at 0.15: eligible 0, 5; fooled none -> no mean distortion
  assert record.sr[0.5][:2] == (0, 2) and record.mean_l_inf[0.5] is None
  assert record.robust_accuracy[0.5][:2] == (2, 6)
  assert record.plain_success[:2] == (4, 5)
  assert record.attack == 'lagrangian' and record.eps == 0.3 and record.fprs == am.FPRS
  with pytest.raises(ValueError):
    record.fooled[0.05][0] = False  # read-only


def test_thresholds_at_reject_at_most_the_fpr_of_the_calibration_images():
  scores = np.arange(100, dtype=float)
  assert am.thresholds_at(scores) == {0.01: 98.0, 0.05: 94.0, 0.5: 49.0}
  record = _evaluate(np.ones(100, bool), scores, np.zeros(100, bool), scores,
                     am.thresholds_at(scores))
  for fpr in am.FPRS:
    assert record.sr[fpr].n == 100 - round(100 * fpr)  # accepted clean images


def test_inputs_are_validated():
  ones, zeros = np.ones(3, bool), np.zeros(3)
  with pytest.raises(ValueError, match='adv_score 2'):
    am.success_at(ones, zeros, ones, [0, 0], 0.0)
  with pytest.raises(ValueError, match='clean_score holds NaN'):
    am.success_at(ones, [0, np.nan, 0], ones, zeros, 0.0)
  with pytest.raises(ValueError, match='adv_score holds NaN'):
    am.success_at(ones, zeros, ones, [np.nan, 0, 0], 0.0)
  with pytest.raises(ValueError, match='not finite'):
    am.success_at(ones, zeros, ones, zeros, np.inf)
  with pytest.raises(ValueError, match='adv_success must be boolean'):
    am.success_at(ones, zeros, [0, 2, 1], zeros, 0.0)
  with pytest.raises(ValueError, match='at fpr 0.5 is not finite'):
    _evaluate(ones, zeros, ones, zeros, {0.01: 0, 0.05: 0, 0.5: np.nan})
  with pytest.raises(ValueError, match='no threshold at fpr 0.01'):
    _evaluate(ones, zeros, ones, zeros, {0.05: 0, 0.5: 0})
  with pytest.raises(ValueError, match='l2'):
    _evaluate(ones, zeros, ones, zeros, ACCEPT_ALL, l2=[1.0, 2.0])
  with pytest.raises(ValueError, match='calibration_scores holds NaN'):
    am.thresholds_at([0.0, np.nan])


def test_worst_case_and_monotone_in_eps_by_hand():
  a, b = np.array([1, 0, 0, 0], bool), np.array([0, 1, 0, 0], bool)
  assert am.worst_case({'a': a, 'b': b}).tolist() == [True, True, False, False]
  out = am.monotone_in_eps({0.3: [0, 0, 1, 0], 0.1: a, 0.2: b})
  assert list(out) == [0.1, 0.2, 0.3]
  assert [out[e].tolist() for e in out] == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]]


def _random_records(rng, n=300, eps_values=(0.1, 0.2, 0.3), attacks=am.ATTACKS):
  """{eps: {attack: record}} of the same clean images, attacks growing with eps on average."""
  clean_correct, clean_score = rng.rand(n) < 0.9, rng.randn(n)
  thresholds = am.thresholds_at(clean_score)
  out = {}
  for i, eps in enumerate(eps_values):
    out[eps] = {attack: _evaluate(clean_correct, clean_score, rng.rand(n) < 0.3 + 0.2 * i,
                                  rng.randn(n), thresholds, l_inf=rng.rand(n) * eps,
                                  l2=rng.rand(n), attack=attack, eps=eps)
                for attack in attacks}
  return out


def test_worst_case_is_never_below_an_attack_nor_below_a_smaller_eps():
  rng = np.random.RandomState(1234)
  for _ in range(5):
    records = _random_records(rng)
    worst = am.worst_case_by_eps(records)
    eps_values = sorted(records)
    for i, eps in enumerate(eps_values):
      for fpr in am.FPRS:
        wc = worst[eps].fooled[fpr]
        for record in records[eps].values():
          assert (wc >= record.fooled[fpr]).all()
          assert worst[eps].sr[fpr].k >= record.sr[fpr].k
          assert worst[eps].sr[fpr].n == record.sr[fpr].n
        if i:
          smaller = worst[eps_values[i - 1]]
          assert (wc >= smaller.fooled[fpr]).all() and wc.sum() >= smaller.fooled[fpr].sum()
        assert (wc == np.logical_or.reduce([r.fooled[fpr] for e in eps_values[:i + 1]
                                            for r in records[e].values()])).all()
        assert (worst[eps].robust_accuracy[fpr].value
                <= min(r.robust_accuracy[fpr].value for r in records[eps].values()))
      assert worst[eps].attack == am.WORST_CASE
      assert worst[eps].plain_success.k >= max(r.plain_success.k
                                               for r in records[eps].values())


def test_combined_distortion_is_the_cheapest_fooling_run():
  ones = np.ones(2, bool)
  first = _evaluate(ones, [0, 0], [True, False], [0, 0], ACCEPT_ALL, l_inf=[0.3, 0.1],
                    l2=[3.0, 1.0], eps=0.3)
  second = _evaluate(ones, [0, 0], [True, True], [0, 0], ACCEPT_ALL, l_inf=[0.2, 0.3],
                     l2=[2.0, 5.0], eps=0.3)
  union = am.combine([first, second], 'oblivious')
  assert union.sr[0.05][:2] == (2, 2) and union.eps == 0.3 and union.attack == 'oblivious'
  assert union.mean_l_inf[0.05] == pytest.approx(0.25)  # 0.2 (second), 0.3 (second)
  assert union.mean_l2[0.05] == pytest.approx(3.5)
  other_images = _evaluate([True, False], [0, 0], ones, [0, 0], ACCEPT_ALL, eps=0.3)
  with pytest.raises(ValueError, match='clean images'):
    am.combine([first, other_images], 'oblivious')


def test_threat_model_columns_combine_oblivious_and_need_a_complete_threat_model():
  rng = np.random.RandomState(7)
  losses = ('ce', 'cw', 'hc')
  records = _random_records(rng, eps_values=(0.1, 0.2), attacks=am.ATTACKS[1:] + losses)
  runs = {c: {eps: [records[eps][c]] for eps in records} for c in am.ATTACKS[1:]}
  runs['oblivious'] = {eps: [records[eps][loss] for loss in losses] for eps in records}
  del runs['orthogonal'][0.2]
  cells = am.threat_model_columns(runs)
  assert sorted(cells) == [0.1, 0.2]
  oblivious = cells[0.1]['oblivious']
  assert oblivious.attack == 'oblivious' and oblivious.eps == 0.1
  assert (oblivious.fooled[0.05] == np.logical_or.reduce(
      [records[0.1][loss].fooled[0.05] for loss in losses])).all()
  worst = cells[0.1][am.WORST_CASE]
  assert all(worst.sr[0.05].k >= cells[0.1][c].sr[0.05].k for c in am.ATTACKS)
  assert cells[0.2]['orthogonal'] == 'no orthogonal run at this eps'
  assert cells[0.2][am.WORST_CASE] == ('the threat model is incomplete (no run of orthogonal '
                                       'at this eps or a smaller one)')
  other = _random_records(rng, eps_values=(0.1,), attacks=('lagrangian',))[0.1]['lagrangian']
  with pytest.raises(ValueError, match='clean images'):
    am.threat_model_columns(dict(runs, lagrangian={0.1: [other]}))
  with pytest.raises(ValueError, match='unknown'):
    am.threat_model_columns({'fgsm': {}})


def _with_sr(record, sr5, sr50):
  sr = dict(record.sr)
  sr[0.05], sr[0.5] = sr5, sr50
  return record._replace(sr=sr)


def _table6_cells():
  rng = np.random.RandomState(3)
  base = _random_records(rng, eps_values=(0.1,))[0.1]['lagrangian']
  shown = _with_sr(base, am.rate(123, 1000), am.rate(456, 1000))
  empty = _with_sr(base, am.rate(0, 0), am.rate(0, 0))
  by_column = {c: shown for c in table6_report.COLUMNS}
  rce = dict(by_column, lagrangian='no lagrangian run at eps 0.2')
  return {('lid', 'RCE'): {0.1: by_column, 0.2: rce},
          ('k_density', 'CE'): {0.1: dict(by_column, orthogonal=empty), 0.2: by_column}}


def test_table6_markdown_rows_cells_and_not_computable_notes():
  table = table6_report.table6(_table6_cells(), targeted=False, dataset='MNIST')
  assert [label for label, _ in table.rows] == [
      'K-density / CE', 'K-density / RCE', 'Mahalanobis / CE', 'Mahalanobis / RCE',
      'LID / CE', 'LID / RCE']
  headers = [h for h, _ in table.columns]
  assert headers[:5] == ['eps 0.1 oblivious', 'eps 0.1 Lagrangian', 'eps 0.1 Selective',
                         'eps 0.1 Orthogonal', 'eps 0.1 worst case'] and len(headers) == 10
  md = table.markdown()
  assert md.startswith('### Table 6: adaptive attacks on the detectors (untargeted, L-inf, '
                       'MNIST; SR@5 (SR@50) in %)')
  lines = md.splitlines()
  assert ('| LID / RCE | ' + ' | '.join(['12.3 (45.6)'] * 6 + ['n/c'] + ['12.3 (45.6)'] * 3)
          + ' |') in lines
  assert ('| K-density / CE | ' + ' | '.join(['12.3 (45.6)'] * 3 + ['n/c'] + ['12.3 (45.6)'] * 6)
          + ' |') in lines
  assert 'n/c: no lagrangian run at eps 0.2: LID / RCE (eps 0.2 Lagrangian).' in lines
  assert ('n/c: no clean image both classified correctly and accepted at the 5 % threshold: '
          'K-density / CE (eps 0.1 Orthogonal).') in lines
  assert ('n/c: no results: K-density / RCE (every column); Mahalanobis / CE (every column); '
          'Mahalanobis / RCE (every column); LID / CE (every column).') in lines
  assert any(l.startswith('SR@5 (SR@50), in %: the share of the clean-correct images') and
             'is misclassified and accepted' in l for l in lines)
  assert any('score equal to the threshold is accepted' in l for l in lines)
  assert any(l.startswith('worst case: per example') and 'smaller' in l for l in lines)
  targeted = table6_report.table6(_table6_cells(), targeted=True).markdown()
  assert targeted.startswith('### Table 6: adaptive attacks on the detectors (targeted, L-inf;')
  assert 'is classified as the target and accepted' in targeted
  with pytest.raises(ValueError, match='no row'):
    table6_report.table6({('confidence', 'CE'): {}}, targeted=False)


def test_table6_cell_with_only_one_rate_computable():
  rng = np.random.RandomState(4)
  base = _random_records(rng, eps_values=(0.1,))[0.1]['selective']
  text, reason = table6_report.table6_cell(_with_sr(base, am.rate(1, 8), am.rate(0, 0)))
  assert text == '12.5 (n/c)' and '50 % threshold' in reason
  assert table6_report.table6_cell(None) == (None, 'no results')


def test_table6_detail_csv_reads_back_with_every_number():
  cells = _table6_cells()
  table = table6_report.table6_detail(cells, targeted=True)
  rows = list(csv.reader(io.StringIO(table.csv())))
  header, body = rows[0], rows[1:]
  assert header[:6] == ['Row', 'detector', 'model', 'eps', 'attack', 'images']
  for name in ('SR@1', 'SR@5 low', 'SR@50 high', 'eligible @5', 'robust accuracy @5',
               'mean L-inf @5', 'mean L2 @5', 'plain success', 'n/c reason'):
    assert name in header
  assert len(body) == 6 * 2 * 5
  by_label = {row[0]: dict(zip(header, row)) for row in body}
  row = by_label['LID / RCE / eps 0.1 / Selective']
  assert (row['detector'], row['model'], float(row['eps'])) == ('LID', 'RCE', 0.1)
  assert float(row['SR@5']) == 0.123 and int(row['eligible @5']) == 1000
  assert float(row['SR@5 low']) == pytest.approx(am.wilson_interval(123, 1000)[0])
  assert float(row['SR@50']) == 0.456 and row['n/c reason'] == ''
  record = cells[('lid', 'RCE')][0.1]['selective']
  assert float(row['mean L2 @5']) == pytest.approx(record.mean_l2[0.05])
  assert float(row['robust accuracy @1']) == pytest.approx(record.robust_accuracy[0.01].value)
  missing = by_label['LID / RCE / eps 0.2 / Lagrangian']
  assert missing['SR@5'] == 'nan' and missing['n/c reason'] == 'no lagrangian run at eps 0.2'
  assert by_label['Mahalanobis / CE / eps 0.1 / worst case']['n/c reason'] == 'no results'


def test_table3_rescored_gives_sr5_and_sr50_per_model():
  rng = np.random.RandomState(5)
  base = _random_records(rng, eps_values=(0.1,))[0.1]['selective']
  record = _with_sr(base, am.rate(1, 4), am.rate(0, 0))
  assert table6_report.table3_rescored({'CE': record, 'RCE': None}) == {
      'CE': [0.25, None], 'RCE': [None, None]}
  assert [h for h, _ in table6_report.TABLE3_SR_COLUMNS] == ['SR@5', 'SR@50']


def test_table6_rates_read_back_from_the_detail_csv_as_numbers():
  """RESULTS.md's numeric Table 6 (mean +- s.d. over seeds) from detect's detail CSV."""
  cells = _table6_cells()
  text = table6_report.table6_detail(cells, targeted=False).csv()
  sr5 = table6_report.table6_rates(text, 0.05, targeted=False)
  sr50 = table6_report.table6_rates(text, 0.5, targeted=False)
  assert sr5.name == 'Table 6 SR@5 (untargeted)' and sr50.name == 'Table 6 SR@50 (untargeted)'
  rows5, rows50 = dict(sr5.rows), dict(sr50.rows)
  # the final-feature rows always; the supervised and ensemble rows only with cells
  assert list(rows5) == [table6_report.row_label(d, m) for d in attack_names.ADAPTIVE_DETECTORS
                         for m in ('CE', 'RCE')]
  headers = [h for h, _ in sr5.columns]
  i = headers.index('eps 0.1 Selective')
  assert rows5['LID / RCE'][i] == 0.123 and rows50['LID / RCE'][i] == 0.456
  assert rows5['LID / RCE'][headers.index('eps 0.2 Lagrangian')] is None  # n/c
  assert 'SR@5' in sr5.notes[0] and 'SR@50' not in sr5.notes[0]
