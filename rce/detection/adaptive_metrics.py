"""Success rates of adaptive attacks on a thresholded detector, with Wilson intervals.

An adaptive attack counts only when it fools the classifier and the detector at once. Per
model and detector, a threshold is fixed on clean calibration images at each false-positive
rate of FPRS; the scores here are oriented higher = more suspicious (the opposite of
detection.METRICS), and an image is accepted when its score <= the threshold, so a score
equal to the threshold is accepted (the tie rule, the same in calibration and evaluation).

SR@fpr, the success rate at that threshold, is k / n over the eligible images (clean image
classified correctly and accepted): k of them have an adversarial image that succeeds
(untargeted: misclassified; targeted: classified as the target) and is accepted. The worst
case of a threat model is per example: an image counts as fooled at eps when any attack
fooled it at eps or at a smaller eps. The records keep their per-example masks (read-only) so
that such unions can be formed later. numpy only, TensorFlow-free.
"""
import collections
import math

import numpy as np

from rce.detection import characteristics
from rce.tables import attack_names

# The false-positive rates of the thresholds, as fractions of the clean calibration images.
FPRS = (0.01, 0.05, 0.5)
Z_95 = 1.959963984540054  # the standard normal's 97.5 % quantile: a two-sided 95 % interval

# The attacks of a threat model, the columns of Table 6 in order, and their per-example union.
ATTACKS = attack_names.ADAPTIVE_COLUMNS
WORST_CASE = 'worst case'

# A share k / n with its Wilson interval; value, low and high are None when n == 0.
Rate = collections.namedtuple('Rate', ['k', 'n', 'value', 'low', 'high'])


class AdaptiveEvaluation(collections.namedtuple('AdaptiveEvaluation', [
    'attack',  # the attack (or column: 'oblivious', WORST_CASE), None when not given
    'eps',  # its L-inf budget, None when not given
    'n',  # N, the number of images
    'sr',  # {fpr: Rate}: fooled / eligible (SR@fpr)
    'robust_accuracy',  # {fpr: Rate}: eligible and not fooled / N
    'mean_l_inf',  # {fpr: mean L-inf distortion of the fooled images, None when none}
    'mean_l2',  # {fpr: mean L2 distortion of the fooled images, None when none}
    'plain_success',  # Rate: adversarial image succeeds / clean correct (no detector)
    'clean_correct',  # [N] bool, read-only
    'succeeded',  # [N] bool, read-only: clean correct and adversarial image succeeds
    'eligible',  # {fpr: [N] bool, read-only}: clean correct and clean image accepted
    'fooled',  # {fpr: [N] bool, read-only}: eligible, adversarial succeeds and is accepted
    'l_inf',  # {fpr: [N] float, read-only}: L-inf distortion of each example's image
    'l2',  # {fpr: [N] float, read-only}: its L2 distortion
])):
  """One attack (or a union of attacks) at one eps on one model and detector."""
  __slots__ = ()

  @property
  def fprs(self):
    """The false-positive rates evaluated, ascending."""
    return tuple(sorted(self.sr))


def wilson_interval(k, n, z=Z_95):
  """The Wilson score interval (low, high) of k successes in n trials, None when n == 0.

  Exact at the edges: low is 0 when k == 0 and high is 1 when k == n (the formula gives
  them up to rounding).
  """
  if n < 0 or not 0 <= k <= n:
    raise ValueError('wilson_interval needs 0 <= k <= n, got k=%r, n=%r' % (k, n))
  if n == 0:
    return None
  p, z2 = float(k) / n, z * z
  denominator = 1.0 + z2 / n
  center = (p + z2 / (2.0 * n)) / denominator
  half = z / denominator * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n))
  low = 0.0 if k == 0 else max(0.0, center - half)
  high = 1.0 if k == n else min(1.0, center + half)
  return low, high


def rate(k, n, z=Z_95):
  """Rate of k out of n with its Wilson interval (value, low, high None when n == 0)."""
  k, n = int(k), int(n)
  interval = wilson_interval(k, n, z)
  if interval is None:
    return Rate(k, n, None, None, None)
  return Rate(k, n, float(k) / n, interval[0], interval[1])


def _bool_array(name, values):
  array = np.asarray(values)
  if array.ndim != 1:
    raise ValueError('%s must be one-dimensional [N], got shape %s' % (name, array.shape))
  if array.dtype != bool:
    if array.size and not np.isin(array, (0, 1)).all():
      raise ValueError('%s must be boolean (or 0/1), got values %s' % (
          name, np.unique(array)[:5]))
    array = array.astype(bool)
  return array


def _float_array(name, values):
  array = np.asarray(values, np.float64)
  if array.ndim != 1:
    raise ValueError('%s must be one-dimensional [N], got shape %s' % (name, array.shape))
  if np.isnan(array).any():
    raise ValueError('%s holds NaN at %d of %d examples (first at index %d)' % (
        name, int(np.isnan(array).sum()), array.size, int(np.flatnonzero(np.isnan(array))[0])))
  return array


def _same_length(arrays):
  lengths = {name: len(a) for name, a in arrays.items()}
  if len(set(lengths.values())) > 1:
    raise ValueError('the per-example arrays differ in length: %s' % ', '.join(
        '%s %d' % item for item in sorted(lengths.items())))


def _threshold(where, value):
  try:
    value = float(value)
  except (TypeError, ValueError):
    raise ValueError('the threshold%s is not a number: %r' % (where, value))
  if not math.isfinite(value):
    raise ValueError('the threshold%s is not finite: %r' % (where, value))
  return value


def _read_only(array):
  array = np.array(array)  # a copy: the caller's arrays stay writable and unshared
  array.setflags(write=False)
  return array


def thresholds_at(calibration_scores, fprs=FPRS):
  """{fpr: threshold} on clean calibration scores: at most fpr of them score above it.

  characteristics.fpr_threshold, the one rule of the suite: the threshold is the m-th
  smallest score, m the smallest count with m / M >= 1 - fpr, and a score equal to it is
  accepted (as in success_at).

  Args:
    calibration_scores: [M] float scores of clean calibration images, higher = more
      suspicious, no NaN.
    fprs: false-positive rates in [0, 1).
  """
  scores = _float_array('calibration_scores', calibration_scores)
  if not scores.size:
    raise ValueError('calibration_scores is empty')
  return {fpr: _threshold(' at fpr %g' % fpr, characteristics.fpr_threshold(scores, fpr))
          for fpr in fprs}


def success_at(clean_correct, clean_score, adv_success, adv_score, threshold):
  """Which examples the attack fools at one threshold, and which ones count.

  Tie rule: an image is accepted when its score <= threshold, so a score equal to the
  threshold is accepted (scores are higher = more suspicious).

  Args:
    clean_correct: [N] bool, the clean image is classified correctly.
    clean_score: [N] float detector score of the clean image, no NaN.
    adv_success: [N] bool, the adversarial image is misclassified (untargeted) or classified
      as the target (targeted).
    adv_score: [N] float detector score of the adversarial image, no NaN.
    threshold: finite float.

  Returns:
    (fooled, eligible), [N] bool each: eligible = clean correct and clean accepted; fooled =
    eligible and the adversarial image succeeds and is accepted.

  Raises:
    ValueError: the lengths differ, a score is NaN or the threshold is not finite.
  """
  arrays = {'clean_correct': _bool_array('clean_correct', clean_correct),
            'clean_score': _float_array('clean_score', clean_score),
            'adv_success': _bool_array('adv_success', adv_success),
            'adv_score': _float_array('adv_score', adv_score)}
  _same_length(arrays)
  threshold = _threshold('', threshold)
  eligible = arrays['clean_correct'] & (arrays['clean_score'] <= threshold)
  fooled = eligible & arrays['adv_success'] & (arrays['adv_score'] <= threshold)
  return fooled, eligible


def _mean_where(values, mask):
  return float(values[mask].mean()) if mask.any() else None


def _record(attack, eps, clean_correct, succeeded, eligible, fooled, l_inf, l2):
  """The record of per-example masks: the rates and the mean distortions of the fooled."""
  n = clean_correct.size
  return AdaptiveEvaluation(
      attack=attack, eps=eps, n=n,
      sr={fpr: rate(fooled[fpr].sum(), eligible[fpr].sum()) for fpr in fooled},
      robust_accuracy={fpr: rate((eligible[fpr] & ~fooled[fpr]).sum(), n) for fpr in fooled},
      mean_l_inf={fpr: _mean_where(l_inf[fpr], fooled[fpr]) for fpr in fooled},
      mean_l2={fpr: _mean_where(l2[fpr], fooled[fpr]) for fpr in fooled},
      plain_success=rate(succeeded.sum(), clean_correct.sum()),
      clean_correct=_read_only(clean_correct), succeeded=_read_only(succeeded),
      eligible={fpr: _read_only(m) for fpr, m in eligible.items()},
      fooled={fpr: _read_only(m) for fpr, m in fooled.items()},
      l_inf={fpr: _read_only(a) for fpr, a in l_inf.items()},
      l2={fpr: _read_only(a) for fpr, a in l2.items()})


def evaluate(clean_correct, clean_score, adv_success, adv_score, thresholds, l_inf, l2,
             attack=None, eps=None):
  """SR@fpr, robust accuracy and distortions of one attack at one eps (AdaptiveEvaluation).

  Args:
    clean_correct, clean_score, adv_success, adv_score: as success_at, [N] each; the two
      scores may also be {fpr: [N]}, a score per threshold (the ensemble's).
    thresholds: {fpr: finite threshold} with every fpr of FPRS (more are evaluated too).
    l_inf, l2: [N] float distortion of each adversarial image, no NaN.
    attack, eps: what the record is of, for the reports.

  Raises:
    ValueError: lengths differ, a score or distortion is NaN, a threshold is not finite or
      an fpr of FPRS has none.
  """
  missing = [fpr for fpr in FPRS if fpr not in thresholds]
  if missing:
    raise ValueError('thresholds has no threshold at fpr %s (needs every one of %s)' % (
        ', '.join('%g' % f for f in missing), FPRS))
  clean_correct = _bool_array('clean_correct', clean_correct)
  adv_success = _bool_array('adv_success', adv_success)
  l_inf, l2 = _float_array('l_inf', l_inf), _float_array('l2', l2)
  def at(score, fpr):
    return score[fpr] if isinstance(score, dict) else score

  _same_length({'clean_correct': clean_correct, 'adv_success': adv_success, 'l_inf': l_inf,
                'l2': l2})
  fooled, eligible = {}, {}
  for fpr in sorted(thresholds):
    fooled[fpr], eligible[fpr] = success_at(clean_correct, at(clean_score, fpr), adv_success,
                                            at(adv_score, fpr), _threshold(
                                                ' at fpr %g' % fpr, thresholds[fpr]))
  return _record(attack, eps, clean_correct, clean_correct & adv_success, eligible, fooled,
                 {fpr: l_inf for fpr in fooled}, {fpr: l2 for fpr in fooled})


def worst_case(per_attack_fooled):
  """Per example, fooled by any attack: the OR of {attack: [N] bool} ([N] bool).

  Never below a single attack: every attack's mask is OR-ed in.
  """
  masks = [_bool_array('fooled of %s' % attack, m) for attack, m in per_attack_fooled.items()]
  if not masks:
    raise ValueError('worst_case needs at least one attack')
  _same_length({'fooled of %s' % a: m for a, m in zip(per_attack_fooled, masks)})
  return np.logical_or.reduce(masks)


def monotone_in_eps(fooled_by_eps):
  """{eps: [N] bool} with an example fooled at eps counted as fooled at every larger eps.

  The cumulative OR along the ascending eps, so never below the input at the same eps nor
  below itself at a smaller eps (a larger budget allows the smaller one's image).
  """
  out, so_far = {}, None
  for eps in sorted(fooled_by_eps):
    mask = _bool_array('fooled at eps %g' % eps, fooled_by_eps[eps])
    so_far = mask if so_far is None else so_far | mask
    out[eps] = so_far
  _same_length({'fooled at eps %g' % e: m for e, m in out.items()})
  return out


def _check_same_images(records):
  """The records must be of the same images and thresholds: one clean side and eligibility."""
  first = records[0]
  for other in records[1:]:
    if (other.n != first.n or set(other.eligible) != set(first.eligible)
        or not np.array_equal(other.clean_correct, first.clean_correct)
        or any(not np.array_equal(other.eligible[f], first.eligible[f]) for f in first.eligible)):
      raise ValueError(
          'cannot combine %s (eps %s) with %s (eps %s): their clean images, correctness or '
          'thresholds differ, so their per-example masks do not describe the same images'
          % (other.attack, other.eps, first.attack, first.eps))


def _union(records, fooled, attack, eps):
  """The record of `records` combined per example, with the given fooled masks.

  An example's distortion at an fpr is that of its cheapest counted image: the smallest
  L-inf among the records that fool it there (its L2 from the same record); where none fools
  it, the first record's (such examples enter no mean).
  """
  _check_same_images(records)
  first = records[0]
  columns = np.arange(first.n)
  l_inf, l2 = {}, {}
  for fpr in first.eligible:
    by_record = np.stack([r.fooled[fpr] for r in records])
    record_l_inf = np.stack([r.l_inf[fpr] for r in records])
    cheapest = np.where(by_record, record_l_inf, np.inf).argmin(axis=0)
    l_inf[fpr] = record_l_inf[cheapest, columns]
    l2[fpr] = np.stack([r.l2[fpr] for r in records])[cheapest, columns]
  succeeded = np.logical_or.reduce([r.succeeded for r in records])
  return _record(attack, eps, first.clean_correct, succeeded, first.eligible, fooled, l_inf,
                 l2)


def combine(records, attack, eps=None):
  """The per-example union (worst case) of runs at one eps, e.g. oblivious PGD's three
  losses (ce, cw, hc) as the oblivious column.

  Returns:
    An AdaptiveEvaluation named `attack`; an example's distortion at an fpr is that of the
    cheapest run that fools it there.
  """
  records = list(records)
  if not records:
    raise ValueError('combine needs at least one record for %s' % attack)
  eps = records[0].eps if eps is None else eps
  other_eps = sorted({r.eps for r in records if r.eps is not None and r.eps != eps})
  if other_eps:
    raise ValueError('combine joins runs at one eps: %s has runs at eps %s and %s' % (
        attack, eps, ', '.join('%g' % e for e in other_eps)))
  fooled = {fpr: worst_case({i: r.fooled[fpr] for i, r in enumerate(records)})
            for fpr in records[0].fooled}
  return _union(records, fooled, attack, eps)


def worst_case_by_eps(records_by_eps):
  """The worst case of a threat model at each eps: {eps: AdaptiveEvaluation (WORST_CASE)}.

  Args:
    records_by_eps: {eps: {attack: AdaptiveEvaluation}}, every attack of the threat model
      (e.g. ATTACKS, oblivious already combined) at each eps, all of the same images.

  The worst case at (eps, fpr) fools an example when any attack fooled it at eps or at a
  smaller eps: worst_case over the attacks, then monotone_in_eps over the eps.
  """
  if not records_by_eps:
    raise ValueError('worst_case_by_eps needs at least one eps')
  fprs = next(iter(next(iter(records_by_eps.values())).values())).fooled
  fooled_by_fpr = {
      fpr: monotone_in_eps({eps: worst_case({a: r.fooled[fpr] for a, r in per_attack.items()})
                            for eps, per_attack in records_by_eps.items()})
      for fpr in fprs}
  out = {}
  for eps in sorted(records_by_eps):
    upto = [r for e in sorted(records_by_eps) if e <= eps
            for r in records_by_eps[e].values()]
    out[eps] = _union(upto, {fpr: fooled_by_fpr[fpr][eps] for fpr in fprs}, WORST_CASE, eps)
  return out


def threat_model_columns(runs):
  """Table 6's cells of one (detector, model): {eps: {column: record or n/c reason}}.

  Args:
    runs: {column: {eps: [AdaptiveEvaluation]}} per column of ATTACKS; a column with several
      runs at one eps (oblivious: ce, cw, hc) is their per-example union (`combine`).

  Returns:
    {eps: {column: AdaptiveEvaluation or str}} with WORST_CASE, a str being why the cell is
    not computable: a missing run, or a worst case whose threat model is incomplete at that
    eps or a smaller one (it would understate the attacks).
  """
  unknown = sorted(set(runs) - set(ATTACKS))
  if unknown:
    raise ValueError('unknown Table 6 columns %s (expected %s)' % (unknown, ATTACKS))
  all_eps = sorted({eps for by_eps in runs.values() for eps in by_eps})
  cells = {eps: {} for eps in all_eps}
  for column in ATTACKS:
    for eps in all_eps:
      found = runs.get(column, {}).get(eps)
      cells[eps][column] = (combine(found, column, eps) if found
                            else 'no %s run at this eps' % column)
  complete = []
  for eps in all_eps:
    missing = [c for c in ATTACKS if isinstance(cells[eps][c], str)]
    if missing:
      break
    complete.append(eps)
  worst = worst_case_by_eps({eps: {c: cells[eps][c] for c in ATTACKS} for eps in complete}
                            ) if complete else {}
  for eps in all_eps:
    cells[eps][WORST_CASE] = worst.get(eps) or (
        'the threat model is incomplete (no run of %s at this eps or a smaller one)' % (
            ', '.join(c for c in ATTACKS if any(isinstance(cells[e][c], str)
                                                for e in all_eps if e <= eps))))
  return cells
