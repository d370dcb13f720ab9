"""Tables 4 and 5 computed: the supervised detectors of every attack and model, as records.

Fits detect_characteristics' supervised detectors (K-density, LID, Mahalanobis) on one split
of the attacked images, scores them on each attack's test part (Table 4) and the FGSM-trained
ones on every attack (Table 5), and scores every example (per_example_scores.csv). The report
(rce.reports.supervised_report) renders the records. TensorFlow-free.
"""
import collections

import numpy as np

from rce.detection import detect_characteristics as dchar
from rce.results import result_files
from rce.tables import models as model_names

# The one split of the attacked images (dchar.example_split): train and test example
# indices, whether it is stratified by class, its seed and the number of images split.
ExampleSplit = collections.namedtuple('ExampleSplit',
                                      ['train', 'test', 'stratified', 'seed', 'num_images'])
# A detector trained on the attack's own training part, scored on its test part (Table 4):
# AUROC and detected at 5 % FPR, both None with `reason` when not computable.
DetectorScore = collections.namedtuple('DetectorScore',
                                       ['auroc', 'detected_at_fpr5', 'reason'])
# A detector trained on dchar.SEEN_ATTACK, scored on another attack's test part (Table 5).
TransferScore = collections.namedtuple('TransferScore', ['auroc', 'reason'])
# The Mahalanobis pre-processing eps chosen on the validation part, and the AUROC of each eps.
ChosenEps = collections.namedtuple('ChosenEps', ['eps', 'validation_aurocs'])
# One row of per_example_scores.csv: an example's version (normal, adversarial, noisy), its
# unsupervised scores (higher = more normal) and, kept and fitted, each supervised detector's
# score (higher = more adversarial) and whether it flags it at 5 % FPR; None otherwise.
ExampleScores = collections.namedtuple('ExampleScores', (
    ['attack', 'model', 'example', 'version', 'kept', 'split', 'k_density']
    + list(dchar.UNSUPERVISED) + ['supervised_%s' % d for d in dchar.DETECTORS]
    + ['flagged_%s' % d for d in dchar.DETECTORS]))
# The split of an example in neither part.
NO_SPLIT = '-'


class SupervisedEvaluation(collections.namedtuple('SupervisedEvaluation', [
    'split',  # ExampleSplit
    'detectors',  # {(attack, model, detector): DetectorScore}, where there are characteristics
    'transfer',  # {(attack, model, detector): TransferScore}, where both have characteristics
    'chosen_eps',  # {(attack, model): ChosenEps} of the fitted Mahalanobis detectors
    'examples',  # [ExampleScores]
])):
  """The supervised detectors of one detect run; a key absent from `detectors` or
  `transfer` is a cell without results or characteristics."""
  __slots__ = ()

  def split_record(self):
    """The split and the chosen eps as detect's summary.json records them."""
    eps = {}
    for (attack, model), chosen in self.chosen_eps.items():
      eps.setdefault(attack, {})[model] = {'eps': chosen.eps,
                                           'validation_aurocs': chosen.validation_aurocs}
    return {'train': len(self.split.train), 'test': len(self.split.test),
            'stratified': self.split.stratified, 'seed': self.split.seed,
            'mahalanobis_eps': eps}


def shared_labels(rounds):
  """labels_true of the attacked images (the longest run); every attack attacked a prefix
  of the same images, in the same order; ResultsError otherwise."""
  longest = max((r.data['labels_true'] for _, pm in rounds for r in pm.values()), key=len)
  for _, per_model in rounds:
    for r in per_model.values():
      labels = r.data['labels_true']
      if not np.array_equal(labels, longest[:len(labels)]):
        raise result_files.ResultsError('%s: its images are not the ones the other attacks '
                                        'attacked (labels differ)' % r.evaluation.directory)
  return longest


def example_split(rounds, seed=0):
  """The ExampleSplit of the attacked images every supervised detector is fitted on."""
  labels = shared_labels(rounds)
  train, test, stratified = dchar.example_split(labels, seed)
  return ExampleSplit(train, test, stratified, seed, len(labels))


def evaluate(rounds, seed=0):
  """The supervised detectors of every attack and model with characteristics.

  Args:
    rounds: [(attack, {model: attack_evaluation.AttackRound})], in table order.
    seed: seed of the split and of the detectors.

  Returns:
    A SupervisedEvaluation.

  Raises:
    result_files.ResultsError: the attacks did not attack the same images.
  """
  split = example_split(rounds, seed)
  train_ex, test_ex = split.train, split.test
  chars = {(attack, model): r for attack, per_model in rounds
           for model, r in per_model.items() if r.characteristics is not None}
  fitted, detectors = {}, {}
  for attack, _ in rounds:
    for det in dchar.DETECTORS:
      for model in model_names.MODELS:
        r = chars.get((attack, model))
        if r is None:
          continue
        res = dchar.supervised(det, r.characteristics.sets[det], r.keep, train_ex, test_ex,
                               seed)
        fitted[(attack, model, det)] = res
        detectors[(attack, model, det)] = DetectorScore(res['auroc'], res['detected_at_fpr5'],
                                                        res['reason'])
  transfer = {}
  for attack, _ in rounds:
    for det in dchar.DETECTORS:
      for model in model_names.MODELS:
        trained, r = fitted.get((dchar.SEEN_ATTACK, model, det)), chars.get((attack, model))
        if trained is not None and r is not None:
          transfer[(attack, model, det)] = TransferScore(*dchar.transfer_auroc(
              trained, r.characteristics.sets[det], r.keep, test_ex))
  chosen = {}
  for attack, _ in rounds:
    for model in model_names.MODELS:
      res = fitted.get((attack, model, 'mahalanobis'))
      if res is not None and res['model'] is not None:
        eps = chars[(attack, model)].characteristics.arrays['mahalanobis_eps'][res['eps_index']]
        chosen[(attack, model)] = ChosenEps(float(eps), res['validation_aurocs'])
  examples = []
  for attack, per_model in rounds:
    for model, r in sorted(per_model.items()):
      if r.characteristics is not None:
        examples.extend(_example_scores(attack, model, r, fitted, split))
  return SupervisedEvaluation(split, detectors, transfer, chosen, examples)


def _example_scores(attack, model, attack_round, fitted, split):
  """ExampleScores per example and version of one attack on one model."""
  keep, chars = attack_round.keep, attack_round.characteristics
  n = len(keep)
  where = np.where(np.isin(np.arange(n), split.test), 'test',
                   np.where(np.isin(np.arange(n), split.train), 'train', NO_SPLIT))
  unsup = {key: dchar.unsupervised_scores(chars.arrays, key) for key, _ in dchar.VERSIONS}
  sup = {}
  for det in dchar.DETECTORS:
    res = fitted.get((attack, model, det))
    if res is None or res['score'] is None:
      continue
    flags = dchar.flagged(res)
    # supervised_dataset's row order: adversarial, normal, noisy, each over the kept examples
    kept = int(keep.sum())
    version = np.array(['adv'] * kept + ['normal'] * kept + ['noisy'] * kept)
    for ex, v, score, flag in zip(res['example'], version, res['score'], flags):
      sup[(int(ex), v, det)] = (float(score), bool(flag))
  rows = []
  for i in range(n):
    for key, name in dchar.VERSIONS:
      scored = [sup.get((i, key, d), (None, None)) for d in dchar.DETECTORS]
      rows.append(ExampleScores(
          attack, model, i, name, bool(keep[i]), str(where[i]),
          float(chars.sets['k_density'][key][i, 0]),
          *([float(unsup[key][m][i]) for m in dchar.UNSUPERVISED]
            + [s for s, _ in scored] + [f for _, f in scored])))
  return rows
