"""Tests of detection.py against brute-force references, and of report_render.py (seeded, CPU,
fast)."""
import csv
import hashlib
import io
import logging
import math
import os

import matplotlib.image
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tests.helpers import PNG_SIGNATURE  # pylint: disable=g-bad-import-order
from rce.detection import detection
from rce.reports import report_render
from rce.reports import report_tables


# ---- ROC-AUC ----------------------------------------------------------------------------


def mann_whitney_auc(pos, neg):
  """Brute-force pair count of ties='half': 1 for pos > neg, 0.5 for a tie."""
  total = 0.0
  for p in pos:
    for n in neg:
      total += 1.0 if p > n else (0.5 if p == n else 0.0)
  return total / (len(pos) * len(neg))


@pytest.mark.parametrize('seed', [0, 1, 2, 3, 4])
def test_roc_auc_matches_sklearn_and_pair_count_with_ties(seed):
  rng = np.random.RandomState(seed)
  pos = np.round(rng.normal(0.3, 1.0, size=rng.randint(5, 60)), 1)
  neg = np.round(rng.normal(0.0, 1.0, size=rng.randint(5, 60)), 1)
  auc = detection.roc_auc(pos, neg)
  y = np.r_[np.ones(pos.size), np.zeros(neg.size)]
  assert auc == pytest.approx(roc_auc_score(y, np.r_[pos, neg]), abs=1e-12)
  assert auc == pytest.approx(mann_whitney_auc(pos, neg), abs=1e-12)


def test_roc_auc_extremes_and_not_computable():
  assert detection.roc_auc([1.0, 2.0], [0.0, -1.0]) == 1.0
  assert detection.roc_auc([0.0], [1.0]) == 0.0
  assert detection.roc_auc([1.0, 1.0], [1.0]) == 0.5
  assert detection.roc_auc([], [0.1, 0.2]) is None
  assert detection.roc_auc([0.1, 0.2], []) is None
  assert detection.roc_auc([0.3], []) is None
  assert detection.roc_auc([], []) is None


def matlab_auc_m(test_targets, output):
  """Literal port of the original's Matlab_scripts/AUC.m (P2333/Reverse-Cross-Entropy).

  Matlab's `sort` is stable, hence kind='stable'; indices here are 0-based, ranks 1-based.
  """
  order = np.argsort(output, kind='stable')  # [A,I]=sort(output);
  m, n = 0, 0
  for i in range(len(output)):
    if test_targets[i] == 1:
      m += 1
    else:
      n += 1
  sigma = 0
  for i in range(m + n, 0, -1):  # for i=M+N:-1:1
    if test_targets[order[i - 1]] == 1:
      sigma += i
  return (sigma - (m + 1) * m / 2) / (m * n)


def original_call(pos, neg):
  """AUC.m called as auc_of_roc_RCE.m does: targets [ones zeros], outputs [normal adv]."""
  return matlab_auc_m(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg])


def tied_scores(rng, size, kind):
  """Scores with many ties: small integers, or confidences saturated at 1.0 (float32)."""
  if kind == 'integers':
    return rng.randint(0, 4, size=size).astype(np.float64)
  logits = rng.normal(0.0, 1.0, size=(size, 10)).astype(np.float32)
  logits[:, 0] += rng.choice([2.0, 200.0], size=size).astype(np.float32)
  z = logits - logits.max(axis=1, keepdims=True)
  probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)  # float32: saturates at 1.0
  return probs.max(axis=1)


@pytest.mark.parametrize('kind', ['integers', 'saturated'])
@pytest.mark.parametrize('n_pos,n_neg', [(1, 1), (1, 7), (6, 1), (5, 3), (40, 40),
                                         (97, 53), (400, 300)])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_roc_auc_original_ties_equal_a_port_of_auc_m(seed, n_pos, n_neg, kind):
  rng = np.random.RandomState(seed)
  pos, neg = tied_scores(rng, n_pos, kind), tied_scores(rng, n_neg, kind)
  if kind == 'saturated' and n_pos > 10:
    assert (pos == 1.0).any() and (neg == 1.0).any()
  auc = detection.roc_auc(pos, neg, ties='original')
  assert auc == original_call(pos, neg)  # exact: both are an integer count / (n_pos n_neg)
  n_ties = int((pos[:, None] == neg[None, :]).sum())
  assert detection.roc_auc(pos, neg, ties='half') == pytest.approx(
      auc + 0.5 * n_ties / (n_pos * n_neg), abs=1e-12)
  y = np.r_[np.ones(n_pos), np.zeros(n_neg)]
  assert detection.roc_auc(pos, neg, ties='half') == pytest.approx(
      roc_auc_score(y, np.r_[pos, neg]), abs=1e-12)


@pytest.mark.parametrize('seed', [0, 1, 2, 3])
def test_roc_auc_half_ties_still_equal_sklearn_on_saturated_scores(seed):
  rng = np.random.RandomState(seed)
  pos, neg = tied_scores(rng, 80, 'saturated'), tied_scores(rng, 60, 'saturated')
  y = np.r_[np.ones(pos.size), np.zeros(neg.size)]
  want = roc_auc_score(y, np.r_[pos, neg])
  assert detection.roc_auc(pos, neg) == detection.roc_auc(pos, neg, ties='half')
  assert detection.roc_auc(pos, neg, ties='half') == pytest.approx(want, abs=1e-12)
  assert detection.roc_auc(pos, neg, ties='half') == pytest.approx(mann_whitney_auc(pos, neg),
                                                                   abs=1e-12)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_roc_auc_rules_agree_without_ties(seed):
  rng = np.random.RandomState(seed)
  pos = rng.normal(0.5, 1.0, size=rng.randint(1, 200))
  neg = rng.normal(0.0, 1.0, size=rng.randint(1, 200))
  assert not np.isin(pos, neg).any()
  half = detection.roc_auc(pos, neg, ties='half')
  assert detection.roc_auc(pos, neg, ties='original') == pytest.approx(half, abs=1e-12)
  assert detection.roc_auc(pos, neg, ties='original') == original_call(pos, neg)


def test_roc_auc_original_ties_hand_made_and_not_computable():
  assert detection.roc_auc([1.0, 1.0], [1.0], ties='original') == 0.0
  assert detection.roc_auc([1.0, 0.5], [1.0, 0.2], ties='original') == 0.5  # 2 of 4 pairs
  assert detection.roc_auc([1.0, 0.5], [1.0, 0.2], ties='half') == 0.625
  assert detection.roc_auc([np.inf, 2.0], [-np.inf, 2.0], ties='original') == 0.75
  assert detection.roc_auc([], [0.1, 0.2], ties='original') is None
  assert detection.roc_auc([0.1, 0.2], [], ties='original') is None
  assert detection.roc_auc([], [], ties='original') is None
  with pytest.raises(ValueError, match='NaN'):
    detection.roc_auc([np.nan, 1.0], [0.0], ties='original')


@pytest.mark.parametrize('bad', ['average', 'Original', '', None, 0.5])
def test_roc_auc_unknown_tie_rule_raises_naming_the_valid_ones(bad):
  for pos, neg in (([1.0, 0.0], [0.5]), ([], [])):
    with pytest.raises(ValueError) as err:
      detection.roc_auc(pos, neg, ties=bad)
    assert "'half'" in str(err.value) and "'original'" in str(err.value), str(err.value)


def test_detect_passes_the_tie_rule_records_it_and_notes_it(tmp_path, monkeypatch):
  from rce.reports import detect_report  # pylint: disable=g-import-not-at-top
  from rce.results import result_files  # pylint: disable=g-import-not-at-top
  from tests import test_provenance  # pylint: disable=g-import-not-at-top
  results = str(tmp_path / 'results')
  for seed, model in enumerate(('CE', 'RCE')):
    test_provenance._save_attack(results, model, seed)  # pylint: disable=protected-access
  test_provenance._save_kernels(results)  # pylint: disable=protected-access
  real, seen = detection.roc_auc, []

  def spy(pos, neg, ties='half'):
    seen.append(ties)
    return real(pos, neg, ties=ties)

  monkeypatch.setattr(detection, 'roc_auc', spy)
  notes = {'half': 'AUC ties: half credit (rank statistic).',
           'original': 'AUC ties: counted against the normal example, as the original\'s '
                       'AUC.m.'}
  for rule in ('original', 'half'):
    del seen[:]
    out_dir = str(tmp_path / rule)
    kwargs = {} if rule == 'half' else {'auc_ties': rule}
    text, _ = detect_report.detect(results, 'mnist', out_dir=out_dir, **kwargs)
    assert seen == [rule] * 2 * len(detection.METRICS), seen
    assert notes[rule] in text and notes[{'half': 'original', 'original': 'half'}[rule]] \
        not in text
    assert text.index(notes[rule]) < text.index('### Thresholding test')
    with open(os.path.join(out_dir, 'table2.md')) as f:
      assert notes[rule] in f.read()
    summary = result_files.load_verified_summary(out_dir)
    assert summary['provenance']['flags']['auc_ties'] == rule
  with pytest.raises(ValueError, match='original'):
    detect_report.detect(str(tmp_path / 'nothing_here'), 'mnist', auc_ties='average')


def test_roc_curve_points_ends():
  fpr, tpr = detection.roc_curve_points([0.9, 0.8, 0.3], [0.1, 0.5])
  assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
  assert np.trapezoid(tpr, fpr) == pytest.approx(detection.roc_auc([0.9, 0.8, 0.3], [0.1, 0.5]))


# ---- softmax, confidence, non-ME ---------------------------------------------------------


def test_softmax_stable_and_confidence_is_max():
  logits = np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]])
  p = detection.softmax(logits)
  assert np.all(np.isfinite(p)) and np.allclose(p.sum(axis=1), 1.0)
  e = np.exp([1.0, 2.0, 3.0])
  assert np.allclose(p[1], e / e.sum())
  np.testing.assert_array_equal(detection.confidence(p), p.max(axis=1))


def non_me_reference(row):
  y = int(np.argmax(row))
  rest = [row[i] for i in range(len(row)) if i != y]
  mass = sum(rest)
  if mass == 0:
    return 0.0
  return -sum((q / mass) * math.log(q / mass) for q in rest if q > 0)


def test_non_me_matches_per_row_formula():
  rng = np.random.RandomState(0)
  p = detection.softmax(rng.normal(scale=3.0, size=(50, 10)))
  p[0] = [0.0] * 9 + [1.0]                     # all non-max mass zero -> 0, not NaN
  p[1] = [0.5, 0.5] + [0.0] * 8                # tie for the max, one non-max entry
  p[2] = [0.1] * 10                            # uniform: non-ME = log 9
  p[3] = [0.0, 0.0, 0.5, 0.25, 0.25] + [0.0] * 5
  got = detection.non_me(p)
  ref = np.array([non_me_reference(row) for row in p])
  np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-15)
  assert got[0] == 0.0 and got[1] == 0.0
  assert got[2] == pytest.approx(math.log(9))
  assert got[3] == pytest.approx(math.log(2))
  underflow = detection.softmax(np.array([[0.0, -2000.0, -2000.0]]))
  assert detection.non_me(underflow)[0] == 0.0


# ---- kernel density ----------------------------------------------------------------------


def brute_force_density(features, classes, points, point_labels, sigma2):
  out = []
  for x, c in zip(features, classes):
    ks = [math.exp(-float(np.sum((x - z) ** 2)) / sigma2)
          for z, lz in zip(points, point_labels) if lz == c]
    out.append(sum(ks) / len(ks))
  return np.array(out)


@pytest.mark.parametrize('rce', [False, True])
def test_kernel_density_matches_brute_force(rce):
  rng = np.random.RandomState(1)
  points = rng.normal(scale=0.4, size=(30, 5))
  point_labels = np.arange(30) % 3
  features = rng.normal(scale=0.4, size=(25, 5))
  classes = rng.randint(0, 3, size=25)
  sigma2 = detection.sigma2_for(rce)
  kd = detection.KernelDensity(sigma2).fit(points, point_labels)
  ref = brute_force_density(features, classes, points, point_labels, sigma2)
  assert np.all(ref > 0)
  np.testing.assert_allclose(kd.score(features, classes), ref, rtol=1e-9)
  np.testing.assert_allclose(kd.log_score(features, classes), np.log(ref), rtol=1e-9)


def test_log_score_finite_when_density_underflows():
  points = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]])
  point_labels = np.array([0, 0, 1])
  features = np.array([[100.0, 0.0], [60.0, 80.0]])
  sigma2 = detection.sigma2_for(True)
  kd = detection.KernelDensity(sigma2).fit(points, point_labels)
  log_s = kd.log_score(features, [0, 0])
  assert np.all(kd.score(features, [0, 0]) == 0.0)  # exp underflows in float64
  # Exact: log((e^{-a} + e^{-b}) / 2) = -a + log1p(e^{a-b}) - log 2 with a the nearer distance.
  for row, got in zip(features, log_s):
    d2 = np.sort(np.sum((points[:2] - row) ** 2, axis=1)) / sigma2
    ref = -d2[0] + math.log1p(math.exp(d2[0] - d2[1])) - math.log(2)
    assert np.isfinite(got) and got == pytest.approx(ref, rel=1e-12)


def test_kernel_density_missing_class_raises():
  kd = detection.KernelDensity(1.0).fit(np.zeros((2, 3)), [0, 1])
  with pytest.raises(ValueError, match='2'):
    kd.log_score(np.zeros((4, 3)), [0, 1, 2, 0])


def test_kernel_density_vectorized_over_examples(monkeypatch):
  rng = np.random.RandomState(2)
  points = rng.normal(size=(10 * 1000, 64)).astype(np.float32)
  point_labels = np.repeat(np.arange(10), 1000)
  features = rng.normal(size=(20000, 64)).astype(np.float32)
  classes = rng.randint(0, 10, size=20000)
  kd = detection.KernelDensity(detection.sigma2_for(False)).fit(points, point_labels)
  calls = []
  real_logsumexp = detection.logsumexp

  def counting_logsumexp(*args, **kwargs):
    calls.append(1)
    return real_logsumexp(*args, **kwargs)

  monkeypatch.setattr(detection, 'logsumexp', counting_logsumexp)
  log_s = kd.log_score(features, classes)
  assert log_s.shape == (20000,) and np.all(np.isfinite(log_s))
  assert len(calls) <= 20  # a few matrix ops per class, not one per example
  sub = rng.choice(20000, size=40, replace=False)
  for i in sub:  # reference: one example at a time against its class's points
    z = points[point_labels == classes[i]].astype(np.float64)
    d2 = np.sum((z - features[i].astype(np.float64)) ** 2, axis=1)
    ref = real_logsumexp(-d2 / kd.sigma2) - np.log(z.shape[0])
    assert log_s[i] == pytest.approx(ref, rel=1e-9, abs=1e-9)


def test_per_class_median_density_matches_brute_force():
  rng = np.random.RandomState(3)
  points = rng.normal(scale=0.5, size=(12, 4))
  point_labels = np.arange(12) % 3
  features = rng.normal(scale=0.5, size=(31, 4))
  labels = np.arange(31) % 3
  kd = detection.KernelDensity(1.0).fit(points, point_labels)
  got = detection.per_class_median_density(kd, features, labels, num_classes=3)
  dens = brute_force_density(features, labels, points, point_labels, 1.0)
  ref = [np.median(dens[labels == c]) for c in range(3)]
  assert got.shape == (3,) and got.dtype == np.float64
  np.testing.assert_allclose(got, ref, rtol=1e-9)
  with pytest.raises(ValueError):
    detection.per_class_median_density(kd, features, labels, num_classes=4)


# ---- kernel point selection --------------------------------------------------------------


def _training_set(counts, dim=3, seed=0):
  rng = np.random.RandomState(seed)
  labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
  labels = labels[rng.permutation(labels.size)]
  features = rng.normal(size=(labels.size, dim)) + labels[:, None]
  return features, labels


def test_select_kernel_points_reproducible_and_balanced():
  features, labels = _training_set([30, 25, 40])
  p1, l1 = detection.select_kernel_points(features, labels, per_class=20, seed=5, num_classes=3)
  p2, l2 = detection.select_kernel_points(features, labels, per_class=20, seed=5, num_classes=3)
  p3, _ = detection.select_kernel_points(features, labels, per_class=20, seed=6, num_classes=3)
  assert p1.dtype == np.float32 and l1.dtype == np.int64 and p1.shape == (60, 3)
  np.testing.assert_array_equal(p1, p2)
  np.testing.assert_array_equal(l1, l2)
  assert not np.array_equal(p1, p3)
  np.testing.assert_array_equal(np.bincount(l1), [20, 20, 20])
  # Drawn without replacement, from the right class.
  assert len({tuple(row) for row in p1}) == 60
  for row, c in zip(p1, l1):
    assert np.any(np.all(features[labels == c].astype(np.float32) == row, axis=1))


def test_select_kernel_points_short_class_warns_and_empty_class_raises(caplog):
  features, labels = _training_set([30, 7, 40])
  with caplog.at_level(logging.WARNING):
    _, l1 = detection.select_kernel_points(features, labels, per_class=20, num_classes=3)
  np.testing.assert_array_equal(np.bincount(l1), [20, 7, 20])
  assert any('Class 1' in r.getMessage() and ' 7 ' in r.getMessage() for r in caplog.records)
  with pytest.raises(ValueError, match='Class 3'):
    detection.select_kernel_points(features, labels, per_class=20, num_classes=4)


def test_subset_per_class():
  features, labels = _training_set([30, 25, 40])
  points, point_labels = detection.select_kernel_points(features, labels, per_class=20,
                                                        num_classes=3)
  s1, sl1 = detection.subset_per_class(points, point_labels, per_class=5, seed=1)
  s2, sl2 = detection.subset_per_class(points, point_labels, per_class=5, seed=1)
  np.testing.assert_array_equal(s1, s2)
  np.testing.assert_array_equal(sl1, sl2)
  np.testing.assert_array_equal(np.bincount(sl1), [5, 5, 5])
  for row, c in zip(s1, sl1):
    assert np.any(np.all(points[point_labels == c] == row, axis=1))


# ---- kept examples, detection scores, threshold test ------------------------------------


def test_kept_mask_hand_made():
  labels_true = [0, 1, 2, 3, 4, 5]
  labels_nor = [0, 1, 9, 3, 4, 0]
  labels_adv = [1, 1, 0, 3, 7, 2]
  expected = [True, False, False, False, True, False]
  np.testing.assert_array_equal(detection.kept_mask(labels_true, labels_nor, labels_adv),
                                expected)


def test_detection_scores_uses_predicted_class():
  points = np.array([[0.0, 0.0], [3.0, 3.0]])
  kd = detection.KernelDensity(1.0).fit(points, [0, 1])
  logits = np.array([[5.0, 0.0], [0.0, 5.0]])
  features = np.array([[0.0, 0.0], [0.0, 0.0]])
  s = detection.detection_scores(logits, features, kd)
  np.testing.assert_allclose(s['k_density'], [1.0, math.exp(-18.0)])
  np.testing.assert_allclose(s['log_k_density'], [0.0, -18.0], atol=1e-12)
  np.testing.assert_allclose(s['confidence'], [1 / (1 + math.exp(-5))] * 2)
  np.testing.assert_allclose(s['non_me'], [0.0, 0.0])


def test_threshold_test_hand_made():
  # One kernel point per class at 0 and 10 on a line; density = exp(-d^2) with sigma2 = 1.
  kd = detection.KernelDensity(1.0).fit(np.array([[0.0], [10.0]]), [0, 1])
  thresholds = np.array([math.exp(-1.0), math.exp(-1.0)])  # accept within distance 1
  labels_true = np.array([0, 0, 1, 1])
  pred_nor = np.array([0, 0, 1, 0])  # last one misclassified
  features_nor = np.array([[0.2], [0.5], [9.5], [10.0]])          # last: far from class 0
  pred_adv = np.array([1, 1, 0, 1])  # first three wrong
  features_adv = np.array([[0.1], [9.9], [3.0], [10.0]])
  r = detection.threshold_test(kd, thresholds, features_nor, pred_nor, labels_true,
                               features_adv, pred_adv)
  assert r['normal'] == {'n': 4, 'accepted_fraction': 0.75, 'accepted_accuracy': 1.0}
  assert r['adversarial']['n'] == 4
  assert r['adversarial']['accepted_fraction'] == 0.5        # rows 1 and 3
  assert r['adversarial']['accepted_accuracy'] == 0.5        # row 3 correct, row 1 wrong
  none = detection.threshold_test(kd, [2.0, 2.0], features_nor, pred_nor, labels_true,
                                  features_adv, pred_adv)
  assert none['normal']['accepted_fraction'] == 0.0
  assert none['normal']['accepted_accuracy'] is None
  # Density equal to the threshold is accepted (>=): a feature on the kernel point has density 1.
  edge = detection.threshold_test(kd, [1.0, 1.0], np.array([[0.0]]), [0],
                                  [0], np.array([[0.5]]), [0])
  assert edge['normal']['accepted_fraction'] == 1.0
  assert edge['adversarial']['accepted_fraction'] == 0.0


# ---- any number of classes --------------------------------------------------------------

MANY_CLASSES = 100


def _clustered(centers, labels, rng, scale=0.5):
  """Features around their class's center: [N] labels -> [N, D] float64."""
  return centers[labels] + rng.normal(scale=scale, size=(labels.size, centers.shape[1]))


def brute_force_accept(features, pred, labels_true, points, point_labels, sigma2, thresholds):
  """The threshold test one example at a time: (n, accepted fraction, accuracy of accepted)."""
  dens = brute_force_density(features, pred, points, point_labels, sigma2)
  accepted = [d >= thresholds[c] for d, c in zip(dens, pred)]
  n_acc = sum(accepted)
  correct = sum(1 for a, p, t in zip(accepted, pred, labels_true) if a and p == t)
  return len(pred), n_acc / len(pred), (correct / n_acc if n_acc else None)


def test_detectors_with_100_classes_match_brute_force():
  k = MANY_CLASSES
  rng = np.random.RandomState(7)
  centers = rng.normal(scale=3.0, size=(k, 4))
  labels = rng.permutation(np.repeat(np.arange(k), 5))
  features = _clustered(centers, labels, rng)
  points, point_labels = detection.select_kernel_points(features, labels, k, per_class=3,
                                                        seed=2)
  assert points.shape == (3 * k, 4) and point_labels.dtype == np.int64
  np.testing.assert_array_equal(np.bincount(point_labels, minlength=k), [3] * k)
  for row, c in zip(points, point_labels):
    assert np.any(np.all(features[labels == c].astype(np.float32) == row, axis=1))

  sigma2 = detection.sigma2_for(False)
  kd = detection.KernelDensity(sigma2).fit(points, point_labels)
  medians = detection.per_class_median_density(kd, features, labels, k)
  dens = brute_force_density(features, labels, points, point_labels, sigma2)
  assert medians.shape == (k,) and np.all(medians > 0)
  np.testing.assert_allclose(medians, [np.median(dens[labels == c]) for c in range(k)],
                             rtol=1e-9)

  # Normal inputs near their true class (a tenth misclassified); adversarial ones near the
  # wrong class the model gives them.
  labels_true = rng.randint(0, k, size=300)
  pred_nor = np.where(rng.rand(300) < 0.1, rng.randint(0, k, size=300), labels_true)
  pred_adv = (labels_true + rng.randint(1, k, size=300)) % k
  features_nor = _clustered(centers, pred_nor, rng)
  features_adv = _clustered(centers, pred_adv, rng)
  got = detection.threshold_test(kd, medians, features_nor, pred_nor, labels_true,
                                 features_adv, pred_adv)
  for side, feats, pred in (('normal', features_nor, pred_nor),
                            ('adversarial', features_adv, pred_adv)):
    n, fraction, accuracy = brute_force_accept(feats, pred, labels_true, points, point_labels,
                                               sigma2, medians)
    assert 0 < fraction < 1, side
    assert got[side]['n'] == n
    assert got[side]['accepted_fraction'] == pytest.approx(fraction, abs=1e-12)
    assert got[side]['accepted_accuracy'] == pytest.approx(accuracy, abs=1e-12)
  assert got['adversarial']['accepted_accuracy'] == 0.0

  logits = rng.normal(scale=3.0, size=(40, k))
  scores = detection.detection_scores(logits, features_nor[:40], kd)
  probs = detection.softmax(logits)
  np.testing.assert_allclose(scores['non_me'], [non_me_reference(row) for row in probs],
                             rtol=1e-12, atol=1e-15)
  np.testing.assert_allclose(scores['k_density'], brute_force_density(
      features_nor[:40], probs.argmax(axis=1), points, point_labels, sigma2), rtol=1e-9)


def test_labels_outside_num_classes_raise():
  features, labels = _training_set([6, 6, 6])
  with pytest.raises(ValueError, match=r'\[0, 2\)'):
    detection.select_kernel_points(features, labels, 2, per_class=3)
  kd = detection.KernelDensity(1.0).fit(features, labels)
  with pytest.raises(ValueError, match=r'\[0, 2\)'):
    detection.per_class_median_density(kd, features, labels, 2)
  with pytest.raises(ValueError, match=r'\[0, 3\)'):
    detection.threshold_test(kd, [0.5, 0.5, 0.5], features[:2], [0, 3], [0, 1],
                             features[:2], [0, 1])


# ---- report tables and plots -------------------------------------------------------------


def _rows():
  full = {(m, model): 0.5 + 0.01 * i + 0.1 * j
          for i, m in enumerate(detection.METRICS) for j, model in enumerate(['CE', 'RCE'])}
  partial = {(m, 'RCE'): 0.987654321 for m in detection.METRICS}
  partial[('k_density', 'RCE')] = None
  return [report_render.Table2Row('fgsm', full, {'CE': 120, 'RCE': 130}),
          report_render.Table2Row('carliniL2', partial, {'RCE': 1})]


def test_table_markdown_layout():
  md = report_render.table2(_rows(), title='MNIST').markdown()
  lines = md.splitlines()
  header = next(l for l in lines if l.startswith('| Attack'))
  assert header == ('| Attack | Confidence CE | Confidence RCE | non-ME CE | non-ME RCE | '
                    'K-density CE | K-density RCE | kept CE | kept RCE |')
  fgsm = next(l for l in lines if l.startswith('| fgsm'))
  assert fgsm == '| fgsm | 0.5000 | 0.6000 | 0.5100 | 0.6100 | 0.5200 | 0.6200 | 120 | 130 |'
  cw = next(l for l in lines if l.startswith('| carliniL2'))
  assert cw == '| carliniL2 | - | 0.9877 | - | 0.9877 | - | n/c | - | 1 |'
  assert 'MNIST' in lines[0]
  assert report_tables.TABLE2_NC_NOTE in md
  no_nc = report_render.table2(_rows()[:1]).markdown()
  assert 'n/c' not in no_nc and 'kept CE' in no_nc


def test_table_csv_round_trip():
  rows = _rows()
  parsed = list(csv.DictReader(io.StringIO(report_render.table2(rows).csv())))
  assert [p['Attack'] for p in parsed] == ['fgsm', 'carliniL2']
  for (_, aucs, extra, _), p in zip(rows, parsed):
    for m in detection.METRICS:
      for model in ('CE', 'RCE'):
        cell = p['%s %s' % (report_render.METRIC_NAMES[m], model)]
        if (m, model) not in aucs:
          assert cell == ''
        elif aucs[(m, model)] is None:
          assert math.isnan(float(cell))
        else:
          assert float(cell) == aucs[(m, model)]
    for model in ('CE', 'RCE'):
      assert p['kept %s' % model] == str(extra.get(model, ''))
      assert p['success %s' % model] == ''  # the CSV has the columns, empty without counts


def _assert_png(path):
  with open(path, 'rb') as f:
    assert f.read(8) == PNG_SIGNATURE
  img = matplotlib.image.imread(path)
  assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
  assert not [n for n in os.listdir(os.path.dirname(path)) if n.endswith('.tmp')]


def test_plot_roc_writes_png(tmp_path):
  rng = np.random.RandomState(0)
  pos, neg = rng.normal(1, 1, 50), rng.normal(0, 1, 50)
  fpr, tpr = detection.roc_curve_points(pos, neg)
  path = str(tmp_path / 'sub' / 'roc.png')
  sha = report_render.plot_roc({'RCE': {'k_density': (fpr, tpr, detection.roc_auc(pos, neg)),
                                        'confidence': ([0, 1], [0, 1], None)}}, path, 'fgsm')
  _assert_png(path)
  with open(path, 'rb') as f:
    assert sha == hashlib.sha256(f.read()).hexdigest()


def test_tsne_embed_and_plot(tmp_path):
  rng = np.random.RandomState(0)
  labels = np.arange(60) % 10
  features = rng.normal(size=(60, 16)) + 3 * np.eye(16)[labels]
  emb = report_render.tsne_embed(features, seed=0)
  assert emb.shape == (60, 2) and np.all(np.isfinite(emb))
  is_adv = np.arange(60) >= 50
  path = str(tmp_path / 'tsne.png')
  report_render.plot_tsne([{'title': 'CE', 'embedding': emb, 'labels': labels, 'is_adv': is_adv},
                           {'title': 'RCE', 'embedding': emb, 'labels': labels,
                            'is_adv': np.zeros(60, bool)}], path)
  _assert_png(path)


def test_threshold_markdown_takes_resolved_titles():
  stats = lambda frac, acc: {'n': 4, 'accepted_fraction': frac, 'accepted_accuracy': acc}
  rows = [('FGSM', {'RCE': {'normal': stats(0.75, 1.0), 'adversarial': stats(0.25, 0.0)},
                    'CE': {'normal': stats(0.5, 0.5), 'adversarial': stats(0.0, None)}})]
  assert report_render.threshold_table(rows).markdown().splitlines() == [
      '| Attack | Model | normal accepted | normal acc. of accepted | adv. accepted | '
      'adv. acc. of accepted |', '|---|---|---|---|---|---|',
      '| FGSM | CE | 0.5000 | 0.5000 | 0.0000 | - |',
      '| FGSM | RCE | 0.7500 | 1.0000 | 0.2500 | 0.0000 |']


@pytest.mark.parametrize('k', [3, 10, 20, 21, MANY_CLASSES])
def test_class_colors_distinct(k):
  colors = report_render.class_colors(k)
  assert len(colors) == k
  assert len({tuple(np.round(c[:3], 6)) for c in colors}) == k
  if k <= 10:
    np.testing.assert_array_equal(colors, np.asarray(matplotlib.colormaps['tab10'].colors)[:k])


def test_plot_tsne_100_classes(tmp_path):
  rng = np.random.RandomState(0)
  labels = np.arange(3 * MANY_CLASSES) % MANY_CLASSES
  emb = rng.normal(size=(labels.size, 2)) + 5 * rng.normal(size=(MANY_CLASSES, 2))[labels]
  is_adv = rng.rand(labels.size) < 0.2
  path = str(tmp_path / 'tsne100.png')
  panels = [{'title': 'CE', 'embedding': emb, 'labels': labels, 'is_adv': is_adv},
            {'title': 'RCE', 'embedding': emb[::-1], 'labels': labels, 'is_adv': is_adv}]
  sha = report_render.plot_tsne(panels, path)
  _assert_png(path)
  with open(path, 'rb') as f:
    assert sha == hashlib.sha256(f.read()).hexdigest()
  with pytest.raises(ValueError, match='labels'):
    report_render.plot_tsne(panels, str(tmp_path / 'bad.png'), num_classes=50)
