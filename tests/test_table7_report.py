"""table7_report: the transfer matrix of adaptive runs x scoring detectors, its detail CSV."""
import csv
import io

import numpy as np
import pytest

from rce.detection import adaptive_metrics as am
from rce.reports import table7_report as t7
from rce.tables import attack_names

N = 240
EPS = (0.1, 0.2)
MEMBERS = attack_names.ENSEMBLE_MEMBERS
ENSEMBLE = attack_names.ENSEMBLE


def _model_records(seed):
  """{(column, attacked): {scored_by: {eps: record}}} of one model from synthetic scores.

  The clean images (correctness, each member's clean score and thresholds) are shared by
  every run, as on one model; each run draws its own adversarial scores, lower (better
  hidden) for the detector it attacks than for the others (all six for the ensemble); the
  ensemble is scored as adaptive_evaluation does, max_d (s_d - t_d) at each fpr with
  threshold 0.
  """
  rng = np.random.RandomState(seed)
  clean_correct = rng.rand(N) < 0.9
  clean = {d: rng.randn(N) for d in MEMBERS}
  thresholds = {d: am.thresholds_at(rng.randn(500)) for d in MEMBERS}
  zero = {fpr: 0.0 for fpr in am.FPRS}

  def ensemble(scores):
    return {fpr: np.max([scores[d] - thresholds[d][fpr] for d in MEMBERS], axis=0)
            for fpr in am.FPRS}

  runs = [(t7.OBLIVIOUS, None)] + [(c, a) for a in t7.DETECTORS for c in t7.TUNED_COLUMNS]
  out = {}
  for column, attacked in runs:
    by_scorer = {d: {} for d in t7.DETECTORS}
    for eps in EPS:
      adv_success = rng.rand(N) < 0.5 + 2 * eps
      hidden = set(MEMBERS) if attacked == ENSEMBLE else {attacked}
      adv = {d: rng.randn(N) + (-1.0 if d in hidden else 1.0) for d in MEMBERS}
      l_inf, l2 = rng.uniform(0, eps, N), rng.uniform(0, 3, N)
      for d in MEMBERS:
        by_scorer[d][eps] = am.evaluate(clean_correct, clean[d], adv_success, adv[d],
                                        thresholds[d], l_inf, l2, attack=column, eps=eps)
      by_scorer[ENSEMBLE][eps] = am.evaluate(clean_correct, ensemble(clean), adv_success,
                                             ensemble(adv), zero, l_inf, l2, attack=column,
                                             eps=eps)
    out[(column, attacked)] = by_scorer
  return out


@pytest.fixture(scope='module')
def transfer():
  return {'CE': _model_records(0), 'RCE': _model_records(1)}


def _copy(transfer):
  return {m: {run: {d: dict(by_eps) for d, by_eps in by_scorer.items()}
              for run, by_scorer in by_run.items()} for m, by_run in transfer.items()}


def _cells(table):
  headers = [h for h, _ in table.columns]
  return {label: dict(zip(headers, cells)) for label, cells in table.rows}


def _detail_rows(transfer):
  table = t7.table7_detail(transfer, targeted=False, dataset='mnist')
  headers = [h for h, _ in table.columns]
  return [dict(zip(headers, cells)) for _, cells in table.rows]


def test_layout_rows_by_model_then_detector_columns_oblivious_then_attacked(transfer):
  table = t7.table7(transfer, False, 0.1, 'mnist')
  labels = [label for label, _ in table.rows]
  assert labels[:7] == ['K-density / CE', 'Mahalanobis / CE', 'LID / CE',
                        'supervised K-density / CE', 'supervised LID / CE',
                        'supervised Mahalanobis / CE', 'ensemble (all six accept) / CE']
  assert labels[7:] == [label.replace('/ CE', '/ RCE') for label in labels[:7]]
  assert [h for h, _ in table.columns] == [
      'oblivious', 'vs K-density', 'vs Mahalanobis', 'vs LID', 'vs supervised K-density',
      'vs supervised LID', 'vs supervised Mahalanobis', 'vs ensemble']
  assert table.title == ('Table 7: transfer, attack tuned against A scored by B at 5 % FPR '
                         '(untargeted, eps 0.1, mnist; SR@5 in %)')
  # every run is present: no n/c, and the notes say what the cells are
  assert all(c is not None for _, row in table.rows for c in row)
  notes = ' '.join(table.notes)
  assert 'misclassified' in notes and 'diagonal (B = A)' in notes
  assert 'Lagrangian, Selective and Orthogonal' in notes and 'higher than 5 %' in notes
  assert 'n/c:' not in notes
  assert 'classified as the target' in ' '.join(t7.table7(transfer, True, 0.1).notes)


def test_diagonal_is_the_union_of_the_three_tuned_runs_and_detail_rows_are_exact(transfer):
  cells = _cells(t7.table7(transfer, False, 0.2))
  by_run = transfer['RCE']
  for attacked in ('lid', 'supervised_mahalanobis', ENSEMBLE):
    records = [by_run[(c, attacked)][attacked][0.2] for c in t7.TUNED_COLUMNS]
    union = am.combine(records, 'union')
    label = t7.row_label(attacked, 'RCE')
    assert cells[label][t7.column_header(attacked)] == '%.1f' % (
        100 * union.sr[0.05].value)
    assert all(union.sr[0.05].k >= r.sr[0.05].k for r in records)
    assert t7.tuned_cell(dict(zip(t7.TUNED_COLUMNS, records))) == (
        '%.1f' % (100 * union.sr[0.05].value), None)
  oblivious = by_run[('oblivious', None)]['k_density'][0.2]
  assert cells['K-density / RCE']['oblivious'] == '%.1f' % (100 * oblivious.sr[0.05].value)

  rows = _detail_rows(transfer)
  selective = by_run[('selective', 'lid')]['lid'][0.2].sr[0.05]
  found = [r for r in rows if (r['model'], r['eps'], r['attack'], r['attacked detector'],
                               r['scored by']) == ('RCE', 0.2, 'Selective', 'LID', 'LID')]
  assert len(found) == 1
  row = found[0]
  assert (row['SR@5'], row['SR@5 low'], row['SR@5 high'], row['fooled @5'],
          row['eligible @5'], row['images']) == (selective.value, selective.low,
                                                 selective.high, selective.k, selective.n, N)
  union = [r for r in rows if (r['model'], r['eps'], r['attack'], r['attacked detector'],
                               r['scored by']) == ('RCE', 0.2, 'tuned union', 'LID', 'LID')]
  assert union[0]['SR@5'] == am.combine(
      [by_run[(c, 'lid')]['lid'][0.2] for c in t7.TUNED_COLUMNS], 'u').sr[0.05].value
  # one row per record of the input, plus one union per (model, eps, attacked, scored_by)
  records = sum(len(by_eps) for by_run in transfer.values() for by_scorer in by_run.values()
                for by_eps in by_scorer.values())
  unions = 2 * len(EPS) * len(t7.DETECTORS) * len(t7.DETECTORS)
  assert len(rows) == records + unions


def test_the_ensemble_is_never_above_a_detector_on_its_own_images(transfer):
  rows = _detail_rows(transfer)
  def key(r):
    return r['model'], r['eps'], r['attack'], r['attacked detector']

  ensemble = {key(r): r for r in rows if r['scored by'] == 'ensemble'}
  compared = 0
  for row in rows:
    mine = ensemble[key(row)]
    if row['scored by'] == 'ensemble':
      assert row['SR@5 on ensemble images'] == row['SR@5']  # its own images
      continue
    assert row['ensemble images @5'] == mine['eligible @5']
    assert row['eligible @5'] >= mine['eligible @5']  # all six accept: a subset
    assert mine['SR@5'] <= row['SR@5 on ensemble images']
    compared += 1
  assert compared == len(rows) * 6 // 7
  # the counts by hand for one run
  by_scorer = transfer['CE'][('orthogonal', 'mahalanobis')]
  eligible = by_scorer[ENSEMBLE][0.1].eligible[0.05]
  fooled = by_scorer['lid'][0.1].fooled[0.05]
  assert t7.on_ensemble_images(by_scorer['lid'][0.1], by_scorer[ENSEMBLE][0.1]) == (
      int((fooled & eligible).sum()), int(eligible.sum()))
  # the ensemble rejects more clean images than any member alone
  assert eligible.sum() < min(by_scorer[d][0.1].eligible[0.05].sum() for d in MEMBERS)


def test_a_missing_run_is_nc_with_its_reason_in_the_notes(transfer):
  partial = _copy(transfer)
  del partial['CE'][('orthogonal', 'lid')]
  del partial['RCE'][('selective', 'k_density')]['mahalanobis']
  del partial['RCE'][('oblivious', None)]['lid'][0.1]
  for by_scorer in partial['RCE'][('lagrangian', ENSEMBLE)].values():
    del by_scorer[0.1]
  table = t7.table7(partial, False, 0.1)
  cells = _cells(table)
  assert all(cells[t7.row_label(d, 'CE')]['vs LID'] is None for d in t7.DETECTORS)
  assert cells['Mahalanobis / RCE']['vs K-density'] is None
  assert cells['K-density / RCE']['vs K-density'] is not None
  assert cells['LID / RCE']['oblivious'] is None
  assert all(cells[t7.row_label(d, 'RCE')]['vs ensemble'] is None for d in t7.DETECTORS)
  notes = table.notes
  assert 'n/c: no Orthogonal PGD run: K-density / CE (vs LID); Mahalanobis / CE (vs LID)' in (
      ' '.join(notes))
  assert ('n/c: the Selective PGD run is not scored by this detector: Mahalanobis / RCE '
          '(vs K-density).') in notes
  assert 'n/c: no oblivious PGD run at this eps: LID / RCE (oblivious).' in notes
  assert any(n.startswith('n/c: no Lagrangian PGD run at this eps: K-density / RCE '
                          '(vs ensemble)') for n in notes)
  assert '| LID / RCE | n/c |' in table.markdown()
  # at the other eps only the runs missing at every eps are n/c
  missing = {(label, h) for label, row in _cells(t7.table7(partial, False, 0.2)).items()
             for h, c in row.items() if c is None}
  assert missing == {('Mahalanobis / RCE', 'vs K-density')} | {
      (t7.row_label(d, 'CE'), 'vs LID') for d in t7.DETECTORS}
  # the detail keeps the runs that were made, the union says which one is missing
  rows = _detail_rows(partial)
  union = [r for r in rows if (r['model'], r['eps'], r['attack'], r['attacked detector'],
                               r['scored by']) == ('CE', 0.1, 'tuned union', 'LID', 'LID')]
  assert union[0]['SR@5'] is None
  assert union[0]['n/c reason'] == 'no Orthogonal PGD run'
  detail = t7.table7_detail(partial, False)
  assert all(len(cells) == len(detail.columns) for _, cells in detail.rows)
  assert not [r for r in rows if r['model'] == 'CE' and r['attack'] == 'Orthogonal'
              and r['attacked detector'] == 'LID']
  # a record without an eligible image, and tuned_cell on its own
  assert t7.tuned_cell({'lagrangian': transfer['CE'][('lagrangian', 'lid')]['lid'][0.1]}) == (
      None, 'no Selective PGD run and no Orthogonal PGD run')
  nobody = am.evaluate(np.zeros(4, bool), np.zeros(4), np.ones(4, bool), np.zeros(4),
                       {fpr: 1.0 for fpr in am.FPRS}, np.zeros(4), np.zeros(4))
  assert t7.sr_cell(nobody) == (
      None, 'no clean image both classified correctly and accepted at the 5 % threshold')
  assert t7.sr_cell('the run failed') == (None, 'the run failed')


@pytest.mark.parametrize('mutate, name', [
    (lambda t: t.update(XE={}), 'XE'),
    (lambda t: t['CE'].update({('fgsm', 'lid'): {}}), 'fgsm'),
    (lambda t: t['CE'].update({('selective', 'knn'): {}}), 'knn'),
    (lambda t: t['CE'].update({('oblivious', 'lid'): {}}), 'lid'),
    (lambda t: t['CE'].update({('selective', None): {}}), 'None'),
    (lambda t: t['CE'][('selective', 'lid')].update(svm={}), 'svm'),
])
def test_an_unknown_key_is_a_value_error_naming_it(transfer, mutate, name):
  broken = _copy(transfer)
  mutate(broken)
  for build in (lambda: t7.table7(broken, False, 0.1), lambda: t7.table7_detail(broken, False),
                lambda: t7.markdown(broken, False)):
    with pytest.raises(ValueError, match=name):
      build()


def test_detail_csv_parses_with_the_expected_columns(transfer):
  table = t7.table7_detail(transfer, targeted=True, dataset='mnist')
  rows = list(csv.DictReader(io.StringIO(table.csv())))
  reader = csv.DictReader(io.StringIO(table.csv()))
  assert reader.fieldnames == [
      'Row', 'model', 'eps', 'attack', 'attacked detector', 'scored by', 'images', 'SR@5',
      'SR@5 low', 'SR@5 high', 'fooled @5', 'eligible @5', 'SR@5 on ensemble images',
      'fooled on ensemble images @5', 'ensemble images @5', 'n/c reason']
  assert len(rows) == len(table.rows)
  first = rows[0]
  assert first['Row'] == 'CE / eps 0.1 / oblivious / scored by K-density'
  assert (first['attack'], first['attacked detector'], first['n/c reason']) == (
      'oblivious', '', '')
  record = transfer['CE'][('oblivious', None)]['k_density'][0.1]
  assert float(first['SR@5']) == record.sr[0.05].value and int(first['images']) == N
  assert {r['scored by'] for r in rows} == set(t7.DETECTOR_TITLES.values())
  assert all(0 <= float(r['SR@5 on ensemble images']) <= 1 for r in rows)
  assert 'classified as the target' in ' '.join(table.notes)


def test_markdown_has_one_table_per_eps(transfer):
  assert t7.all_eps(transfer) == list(EPS)
  text = t7.markdown(transfer, False, 'mnist')
  assert text.count('### Table 7: transfer') == 2
  assert text.index('eps 0.1, mnist') < text.index('eps 0.2, mnist')
  assert t7.markdown({}, False) == ''
