"""Tests of characteristics.py against brute-force references (seeded, CPU, fast, no TF)."""
import math

import numpy as np
import pytest
from sklearn.covariance import EmpiricalCovariance
from sklearn.pipeline import Pipeline

from rce.detection import characteristics as ch


# ---- LID ---------------------------------------------------------------------------------


def brute_lid(query, reference, k, exclude=-1):
  """The MLE formula by a plain loop over the reference rows (row `exclude` skipped)."""
  q = np.ravel(query).astype(np.float64)
  dists = sorted(math.sqrt(float(np.sum((q - np.ravel(r)) ** 2)))
                 for j, r in enumerate(reference) if j != exclude)[:k]
  return -1.0 / (sum(math.log(d / dists[-1]) for d in dists) / k)


@pytest.mark.parametrize('k', [5, 10, 20])
@pytest.mark.parametrize('num_reference', [20, 37, 100])
def test_lid_outside_queries_keep_nearest_neighbour(k, num_reference):
  rng = np.random.RandomState(k * 1000 + num_reference)
  reference = rng.randn(num_reference, 3, 4)
  queries = rng.randn(9, 3, 4)
  got = ch.lid_mle(queries, reference, k)
  want = [brute_lid(q, reference, k) for q in queries]
  np.testing.assert_allclose(got, want, rtol=1e-10)
  # Ma et al.'s [:, 1:k+1] (nearest row dropped) would give something else here.
  if num_reference > k:
    nearest = [int(np.argmin(np.linalg.norm((reference - q).reshape(num_reference, -1), axis=1)))
               for q in queries]
    dropped = [brute_lid(q, reference, k, exclude=j) for q, j in zip(queries, nearest)]
    assert not np.allclose(got, dropped)


@pytest.mark.parametrize('k', [5, 10, 20])
@pytest.mark.parametrize('num_reference', [21, 50, 100])
def test_lid_inside_queries_exclude_themselves(k, num_reference):
  rng = np.random.RandomState(k + num_reference)
  reference = rng.randn(num_reference, 12)
  got = ch.lid_mle(reference, reference, k, self_index=np.arange(num_reference))
  want = [brute_lid(r, reference, k, exclude=i) for i, r in enumerate(reference)]
  np.testing.assert_allclose(got, want, rtol=1e-10)


def test_lid_mixed_self_index_and_float32_input():
  rng = np.random.RandomState(3)
  reference = rng.randn(30, 2, 5).astype(np.float32)
  queries = np.concatenate([reference[[4, 7]], rng.randn(2, 2, 5).astype(np.float32)])
  got = ch.lid_mle(queries, reference, 10, self_index=[4, 7, -1, -1])
  want = [brute_lid(queries[0], reference, 10, 4), brute_lid(queries[1], reference, 10, 7),
          brute_lid(queries[2], reference, 10), brute_lid(queries[3], reference, 10)]
  np.testing.assert_allclose(got, want, rtol=1e-10)
  assert got.dtype == np.float64


def test_lid_too_few_reference_rows_raises():
  rng = np.random.RandomState(0)
  reference = rng.randn(10, 4)
  assert np.all(np.isfinite(ch.lid_mle(rng.randn(3, 4), reference, 10)))
  with pytest.raises(ValueError, match='needs k=10 neighbours.*10 rows.*9 once'):
    ch.lid_mle(reference, reference, 10, self_index=np.arange(10))
  with pytest.raises(ValueError, match='needs k=11'):
    ch.lid_mle(rng.randn(3, 4), reference, 11)


def test_lid_bad_arguments_raise():
  rng = np.random.RandomState(0)
  reference = rng.randn(10, 4)
  with pytest.raises(ValueError, match='self_index has 1 entries'):
    ch.lid_mle(reference[:2], reference, 3, self_index=[0])
  with pytest.raises(ValueError, match='self_index must lie'):
    ch.lid_mle(reference[:1], reference, 3, self_index=[10])
  with pytest.raises(ValueError, match='values per row'):
    ch.lid_mle(rng.randn(2, 5), reference, 3)
  with pytest.raises(ValueError, match='positive integer'):
    ch.lid_mle(reference, reference, 0)


def test_lid_excludes_the_own_row_of_a_query_that_differs_from_it():
  rng = np.random.RandomState(2)
  reference = rng.randn(30, 6)
  queries = reference[:3] + 0.05 * rng.randn(3, 6)  # perturbed copies of rows 0, 1, 2
  got = ch.lid_mle(queries, reference, 8, self_index=[0, 1, 2])
  want = [brute_lid(q, reference, 8, exclude=i) for i, q in enumerate(queries)]
  np.testing.assert_allclose(got, want, rtol=1e-10)


def test_lid_of_a_perturbed_query_is_the_lid_of_its_clean_point():
  """The issue's worked example: 100 points of N(0, I) in 50 dimensions, queries x_i + delta_i
  with ||delta_i|| = 1.5 (the median neighbour distance is about 10). Keeping x_i among the
  neighbours makes d_1 the perturbation's size and pulls the LID down to about a third;
  leaving out row i by index gives the LID of x_i itself. Single estimates scatter by about
  10 % at k = 20, so the means over the 100 queries are compared.

  The issue quoted about 5.9 / 12.2 / 12.0 for one query; with this seed the means are about
  7.5 (kept) / 22 (excluded) / 22 (clean), the same picture."""
  rng = np.random.RandomState(0)
  reference = rng.randn(100, 50)
  delta = rng.randn(100, 50)
  queries = reference + 1.5 * delta / np.linalg.norm(delta, axis=1, keepdims=True)
  k, own = 20, np.arange(100)
  assert 9.0 < np.median(np.linalg.norm(reference[1:] - reference[0], axis=1)) < 11.0
  clean = ch.lid_mle(reference, reference, k, self_index=own)
  excluded = ch.lid_mle(queries, reference, k, self_index=own)
  kept = ch.lid_mle(queries, reference, k)
  assert excluded.mean() == pytest.approx(clean.mean(), rel=0.05)
  assert kept.mean() < 0.5 * clean.mean()  # the old rule's bias the exclusion removes
  # Ma et al.'s mle_batch drops each query's nearest row, which here is its own row.
  d = np.sort(np.linalg.norm(queries[:, None] - reference[None], axis=2), axis=1)[:, 1:k + 1]
  np.testing.assert_allclose(excluded, -1.0 / np.mean(np.log(d / d[:, -1:]), axis=1),
                             rtol=1e-10)


def test_lid_duplicates_give_no_nan():
  rng = np.random.RandomState(1)
  reference = rng.randn(20, 6)
  reference[1] = reference[0]  # a duplicate neighbour of query 0
  query = reference[:1]
  with_dup = ch.lid_mle(query, reference, 5, self_index=[0])
  without = ch.lid_mle(query, np.delete(reference, 1, axis=0), 5, self_index=[0])
  assert np.isfinite(with_dup).all() and 0 < with_dup[0] < without[0]
  # All k neighbours coincide with the query: locally a point, LID 0.
  same = np.repeat(reference[:1], 8, axis=0)
  np.testing.assert_array_equal(ch.lid_mle(same, same, 5, self_index=np.arange(8)), 0.0)
  # All k neighbours equidistant: the MLE diverges; it is capped, with a warning.
  square = np.array([[1.0, 0], [-1, 0], [0, 1], [0, -1]])
  with pytest.warns(RuntimeWarning, match='equidistant'):
    capped = ch.lid_mle(np.zeros((1, 2)), square, 4)
  assert capped[0] == ch._LID_CAP


def random_layers(rng, n):
  """Two layers with different trailing shapes."""
  return [rng.randn(n, 4, 4, 3), rng.randn(n, 17)]


def hand_lid(normal_layers, other_layers, k, bounds):
  """lid_characteristics recomputed chunk by chunk with brute_lid."""
  n = len(normal_layers[0])
  out = {name: np.zeros((n, len(normal_layers))) for name in ['normal'] + list(other_layers)}
  for start, stop in bounds:
    for layer, normal in enumerate(normal_layers):
      ref = normal[start:stop]
      for i in range(stop - start):
        out['normal'][start + i, layer] = brute_lid(ref[i], ref, k, exclude=i)
        for name, layers in other_layers.items():  # each leaves out its own clean image
          out[name][start + i, layer] = brute_lid(layers[layer][start + i], ref, k, exclude=i)
  return out


@pytest.mark.parametrize('n, batch_size, k, bounds', [
    (46, 20, 5, [(0, 20), (20, 40), (40, 46)]),  # last chunk of 6 > k: kept
    (45, 20, 5, [(0, 20), (20, 45)]),  # last chunk of 5 <= k: merged
    (44, 20, 5, [(0, 20), (20, 44)]),  # last chunk of 4 <= 5: merged
    (30, 100, 10, [(0, 30)]),  # one chunk covering everything
    (25, 12, 11, [(0, 12), (12, 25)]),  # last chunk of 1 merged
])
def test_lid_characteristics_matches_hand_computation(n, batch_size, k, bounds):
  rng = np.random.RandomState(n + batch_size + k)
  normal = random_layers(rng, n)
  others = {'adv': random_layers(rng, n), 'noisy': random_layers(rng, n)}
  assert ch.minibatch_bounds(n, batch_size, k) == bounds
  got = ch.lid_characteristics(normal, others, k=k, batch_size=batch_size)
  want = hand_lid(normal, others, k, bounds)
  assert sorted(got) == ['adv', 'noisy', 'normal']
  for name in want:
    assert got[name].shape == (n, 2) and got[name].dtype == np.float64
    np.testing.assert_allclose(got[name], want[name], rtol=1e-10)


def test_lid_characteristics_one_batch_equals_lid_mle():
  rng = np.random.RandomState(5)
  normal = random_layers(rng, 40)
  adv = random_layers(rng, 40)
  got = ch.lid_characteristics(normal, {'adv': adv}, k=7, batch_size=40)
  for layer in range(2):
    np.testing.assert_array_equal(
        got['normal'][:, layer],
        ch.lid_mle(normal[layer], normal[layer], 7, self_index=np.arange(40)))
    np.testing.assert_array_equal(
        got['adv'][:, layer], ch.lid_mle(adv[layer], normal[layer], 7, self_index=np.arange(40)))


def test_lid_characteristics_bad_arguments_raise():
  rng = np.random.RandomState(0)
  normal = random_layers(rng, 30)
  with pytest.raises(ValueError, match='batch_size'):
    ch.lid_characteristics(normal, {}, k=10, batch_size=10)
  with pytest.raises(ValueError, match='layers'):
    ch.lid_characteristics(normal, {'adv': normal[:1]}, k=5, batch_size=10)
  with pytest.raises(ValueError, match='examples'):
    ch.lid_characteristics(normal, {'adv': [a[:20] for a in normal]}, k=5, batch_size=10)
  with pytest.raises(ValueError, match='normal'):
    ch.lid_characteristics(normal, {'normal': normal}, k=5, batch_size=10)
  with pytest.raises(ValueError, match='needs k=5'):
    ch.lid_characteristics([a[:5] for a in normal], {}, k=5, batch_size=10)


# ---- Mahalanobis -------------------------------------------------------------------------


def test_mahalanobis_matches_direct_numpy():
  rng = np.random.RandomState(0)
  labels = rng.randint(0, 4, size=200)
  features = rng.randn(200, 2, 3) + 2.0 * labels[:, None, None]
  means, precision = ch.class_statistics(features, labels, 4)
  flat = features.reshape(200, -1)
  want_means = np.stack([flat[labels == c].mean(axis=0) for c in range(4)])
  centred = flat - want_means[labels]
  cov = EmpiricalCovariance(assume_centered=False).fit(centred)
  np.testing.assert_allclose(means, want_means, rtol=1e-12)
  np.testing.assert_allclose(precision, cov.precision_, rtol=1e-10)
  np.testing.assert_allclose(precision, np.linalg.inv(np.cov(centred.T, bias=True)),
                             rtol=1e-8)

  queries = rng.randn(30, 2, 3) * 3.0
  score, closest = ch.mahalanobis_scores(queries, means, precision)
  per_class = np.array([[-0.5 * (q.ravel() - m) @ precision @ (q.ravel() - m) for m in means]
                        for q in queries])
  np.testing.assert_allclose(score, per_class.max(axis=1), rtol=1e-10)
  np.testing.assert_array_equal(closest, per_class.argmax(axis=1))
  assert closest.dtype == np.int64


def test_class_statistics_missing_class_raises():
  rng = np.random.RandomState(0)
  with pytest.raises(ValueError, match='class.*2 have no example'):
    ch.class_statistics(rng.randn(10, 3), np.array([0, 1] * 5), 3)
  with pytest.raises(ValueError, match='lie in'):
    ch.class_statistics(rng.randn(2, 3), np.array([0, 3]), 3)


# ---- Noisy copies ------------------------------------------------------------------------


def mean_l2(a, b):
  diff = (np.asarray(a, np.float64) - np.asarray(b, np.float64)).reshape(len(a), -1)
  return np.linalg.norm(diff, axis=1).mean()


@pytest.mark.parametrize('target', [0.05, 1.0, 4.0])
def test_noisy_copies_hit_target_and_stay_in_range(target):
  rng = np.random.RandomState(0)
  images = rng.uniform(-0.5, 0.5, size=(20, 6, 6, 3)).astype(np.float32)
  images[:, 0] = 0.5  # pixels on the bounds: half of their noise is clipped
  noisy = ch.noisy_copies(images, target, seed=1)
  assert noisy.dtype == np.float32 and noisy.shape == images.shape
  assert noisy.min() >= -0.5 and noisy.max() <= 0.5
  assert abs(mean_l2(noisy, images) - target) <= 1.01e-3 * target
  np.testing.assert_array_equal(ch.noisy_copies(images, target, seed=1), noisy)
  assert not np.array_equal(ch.noisy_copies(images, target, seed=2), noisy)


def test_noisy_copies_match_the_kept_examples_mean():
  rng = np.random.RandomState(4)
  images = rng.uniform(-0.5, 0.5, size=(30, 5, 5)).astype(np.float32)
  images[:10] = np.where(images[:10] > 0, 0.5, -0.5)  # on the bounds: clipping differs
  keep = np.zeros(30, bool)
  keep[:12] = True
  noisy = ch.noisy_copies(images, 1.5, seed=0, match=keep)
  assert abs(mean_l2(noisy[keep], images[keep]) - 1.5) <= 1.01e-3 * 1.5
  assert abs(mean_l2(noisy, images) - 1.5) > 0.01  # not the mean over all images
  np.testing.assert_array_equal(noisy, ch.noisy_copies(images, 1.5, seed=0, match=keep))
  # No kept example: the mean over all images.
  every = ch.noisy_copies(images, 1.5, seed=0, match=np.zeros(30, bool))
  assert abs(mean_l2(every, images) - 1.5) <= 1.01e-3 * 1.5
  with pytest.raises(ValueError, match='match has 3 entries'):
    ch.noisy_copies(images, 1.5, seed=0, match=[True] * 3)


def test_l0_noisy_copies_flip_as_many_pixels_as_the_attack_changed():
  rng = np.random.RandomState(5)
  images = rng.uniform(-0.5, 0.5, size=(8, 6, 6, 1)).astype(np.float32)
  images[0, :3] = 0.5  # already at the maximum: never a candidate
  adv = images.copy()
  changed = [0, 1, 5, 17, 2, 9, 33, 0]
  for i, count in enumerate(changed):
    flat = adv[i].reshape(-1)
    flat[rng.choice(flat.size, count, replace=False)] += 0.25
  noisy = ch.l0_noisy_copies(images, adv, seed=0)
  assert noisy.dtype == np.float32 and noisy.shape == images.shape
  differs = (noisy != images).reshape(8, -1)
  np.testing.assert_array_equal(differs.sum(axis=1), changed)  # without replacement: exactly
  assert np.all(noisy.reshape(8, -1)[differs] == 0.5)  # each at the image maximum
  np.testing.assert_array_equal(ch.l0_noisy_copies(images, adv, seed=0), noisy)
  assert not np.array_equal(ch.l0_noisy_copies(images, adv, seed=1), noisy)
  # More changed pixels than candidates: every candidate is set.
  few = np.full((1, 4, 4, 1), 0.5, np.float32)
  few[0, 0, :2] = 0.0
  all_set = ch.l0_noisy_copies(few, few - 0.1, seed=0)
  np.testing.assert_array_equal(all_set, np.full_like(few, 0.5))


def test_noisy_copies_edge_cases():
  images = np.random.RandomState(0).uniform(-0.5, 0.5, size=(5, 4, 4)).astype(np.float32)
  np.testing.assert_array_equal(ch.noisy_copies(images, 0.0, seed=0), images)
  with pytest.raises(ValueError, match='not reachable'):
    ch.noisy_copies(images, 100.0, seed=0)
  with pytest.raises(ValueError, match='>= 0'):
    ch.noisy_copies(images, -1.0, seed=0)
  with pytest.raises(ValueError, match='must lie in'):
    ch.noisy_copies(images + 1.0, 1.0, seed=0)
  unit = ch.noisy_copies(images + 0.5, 1.0, seed=0, clip_min=0.0, clip_max=1.0)
  assert unit.min() >= 0.0 and unit.max() <= 1.0
  assert abs(mean_l2(unit, images + 0.5) - 1.0) <= 1.01e-3


# ---- Detection at a false-positive rate (Lee et al.'s TNR at TPR 95 %) -------------------


def brute_detected(normal, adv, fpr):
  """Tries every candidate threshold; keeps the smallest accepting >= 1 - fpr of the normal
  (a score <= t is accepted), and counts the adversarial scores above it."""
  best = np.inf
  for t in np.concatenate([normal, adv]):
    if np.mean(normal <= t) >= 1 - fpr and t < best:
      best = t
  return np.mean(adv > best)


@pytest.mark.parametrize('seed', range(6))
@pytest.mark.parametrize('fpr', [0.05, 0.1, 0.5, 0.0, 0.99])
def test_detected_at_fpr_matches_brute_force_with_ties(seed, fpr):
  rng = np.random.RandomState(seed)
  for _ in range(20):
    normal = rng.randint(0, 6, size=rng.randint(1, 60)).astype(np.float64)
    adv = rng.randint(0, 6, size=rng.randint(1, 60)).astype(np.float64)
    assert ch.detected_at_fpr(normal, adv, fpr) == brute_detected(normal, adv, fpr)
    threshold = ch.fpr_threshold(normal, fpr)
    assert np.mean(normal > threshold) <= fpr  # never more false positives than allowed


def test_detected_at_fpr_is_lees_quantity_not_the_reverse():
  """The issue's worked example: 200 normal scores uniform on (0, 1); 90 adversarial at 5.0
  and 10 uniform on (0, 1). The threshold accepts 95 % of the normal (about 0.95): the 90 far
  ones and about one in twenty of the rest are detected. The old function (95 % of the
  adversarial flagged, share of normal accepted) gave about 0.45."""
  rng = np.random.RandomState(0)
  normal = rng.uniform(size=200)
  adv = np.concatenate([np.full(90, 5.0), rng.uniform(size=10)])
  got = ch.detected_at_fpr(normal, adv, 0.05)
  assert got == brute_detected(normal, adv, 0.05)
  assert 0.90 <= got <= 0.92
  old = np.mean(normal < np.sort(adv)[::-1][94])  # the reverse quantity
  assert 0.3 < old < 0.6


def test_detected_at_fpr_exact_cases():
  # All equal: ties are accepted, so nothing is detected.
  assert ch.detected_at_fpr(np.full(5, 3.0), np.full(7, 3.0)) == 0.0
  assert ch.detected_at_fpr([0, 0], [1, 2, 3]) == 1.0
  # 0.95 * 100 is 95 in floats: the 95th smallest normal score is the threshold.
  normal = np.arange(100.0)
  assert ch.fpr_threshold(normal, 0.05) == 94.0
  assert ch.detected_at_fpr(normal, normal + 0.5) == brute_detected(normal, normal + 0.5, 0.05)
  assert ch.detected_at_fpr([], [1.0]) is None and ch.detected_at_fpr([1.0], []) is None
  with pytest.raises(ValueError, match='NaN'):
    ch.detected_at_fpr([1.0], [np.nan])
  with pytest.raises(ValueError, match='NaN'):
    ch.detected_at_fpr([np.nan], [1.0])
  with pytest.raises(ValueError, match='fpr'):
    ch.detected_at_fpr([1.0], [1.0], fpr=1.0)


# ---- Splits and the dataset --------------------------------------------------------------


def check_split(train, test, n):
  assert np.array_equal(train, np.sort(train)) and np.array_equal(test, np.sort(test))
  assert not np.intersect1d(train, test).size
  np.testing.assert_array_equal(np.union1d(train, test), np.arange(n))


def test_stratified_split():
  labels = np.repeat([0, 1, 2], [50, 31, 19])
  np.random.RandomState(0).shuffle(labels)
  train, test = ch.stratified_split(labels, 0.2, seed=3)
  check_split(train, test, labels.size)
  for c in range(3):
    assert abs(np.sum(labels[test] == c) - 0.2 * np.sum(labels == c)) <= 1
  again = ch.stratified_split(labels, 0.2, seed=3)
  assert all(np.array_equal(a, b) for a, b in zip(again, (train, test)))
  assert not np.array_equal(ch.stratified_split(labels, 0.2, seed=4)[1], test)


def test_supervised_dataset_rows():
  rng = np.random.RandomState(0)
  normal, adv, noisy = rng.randn(6, 2), rng.randn(6, 2), rng.randn(6, 2)
  keep = np.array([1, 0, 1, 1, 0, 1], bool)
  x, y, example = ch.supervised_dataset(normal, adv, noisy, keep)
  kept = np.flatnonzero(keep)
  np.testing.assert_array_equal(x, np.concatenate([adv[kept], normal[kept], noisy[kept]]))
  np.testing.assert_array_equal(y, [1] * 4 + [0] * 8)
  np.testing.assert_array_equal(example, np.tile(kept, 3))
  x1, _, _ = ch.supervised_dataset(normal[:, 0], adv[:, 0], noisy[:, 0], keep)
  assert x1.shape == (12, 1)
  with pytest.raises(ValueError, match='same shape'):
    ch.supervised_dataset(normal, adv[:5], noisy, keep)


# ---- Supervised detector -----------------------------------------------------------------


@pytest.mark.filterwarnings('error')
@pytest.mark.parametrize('min_max', [False, True])
def test_supervised_detector_separates_clouds(min_max):
  rng = np.random.RandomState(0)
  x = np.concatenate([rng.randn(150, 4), rng.randn(150, 4) + 2.5])
  y = np.repeat([0, 1], 150)
  train, test = ch.stratified_split(y, 0.3, seed=0)
  got = ch.supervised_detector(x[train], y[train], x[test], y[test], min_max=min_max)
  assert got['auroc'] > 0.95 and got['detected_at_fpr5'] > 0.7
  assert got['scores'].shape == (test.size,)
  assert isinstance(got['model'], Pipeline)
  assert ('min_max' in got['model'].named_steps) == min_max
  assert got['detected_at_fpr5'] == ch.detected_at_fpr(got['scores'][y[test] == 0],
                                                        got['scores'][y[test] == 1], 0.05)
  again = ch.supervised_detector(x[train], y[train], x[test], y[test], min_max=min_max)
  np.testing.assert_array_equal(again['scores'], got['scores'])


def test_supervised_detector_single_class_part():
  rng = np.random.RandomState(0)
  x = rng.randn(20, 3)
  y = np.repeat([0, 1], 10)
  got = ch.supervised_detector(x[:10], y[:10], x, y)
  assert got['auroc'] is None and got['detected_at_fpr5'] is None
  assert 'training part has only one class' in got['reason']
  got = ch.supervised_detector(x, y, x[10:], y[10:])
  assert got['auroc'] is None and 'test part has only one class' in got['reason']
  got = ch.supervised_detector(x[:11], y[:11], x, y)
  assert got['auroc'] is None and 'cross-validation' in got['reason']
  with pytest.raises(ValueError, match='0 .normal'):
    ch.supervised_detector(x, y + 1, x, y)
