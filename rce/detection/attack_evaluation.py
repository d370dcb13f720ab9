"""Per attack and model, what --mode=detect computes: AUCs, ROC points, thresholding test.

Reads the attack result folders (result_files) and their characteristics, scores the kept
examples with the model's fitted K-density detector and returns immutable records; the
report (rce.reports) only renders them. TensorFlow-free.
"""
import collections

from absl import logging
import numpy as np

from rce.detection import detect_characteristics as dchar
from rce.detection import detection
from rce.results import consistency
from rce.results import result_files
from rce.tables import attack_names
from rce.tables import models as model_names

# One model's fitted detector: its detection.KernelDensity and the [K] per-class thresholds
# of the thresholding test (training medians of the K-density; K, the number of classes).
Detector = collections.namedtuple('Detector', ['kernel_density', 'thresholds'])

# The characteristics of one attack on one model: the file's arrays, their sets per
# supervised detector (detect_characteristics.characteristic_sets) and the run id.
Characteristics = collections.namedtuple('Characteristics', ['arrays', 'sets', 'run_id'])


def success_rate(kept, clean_correct):
  """The attack's success rate, kept / clean_correct, or None without a clean-correct image.

  Args:
    kept: number of kept examples (clean image classified correctly, adversarial wrongly), or
      None when unknown.
    clean_correct: number of clean images classified correctly, or None when unknown.

  Returns:
    float in [0, 1], or None when either count is missing or clean_correct is 0.
  """
  if kept is None or not clean_correct:
    return None
  return float(kept) / float(clean_correct)


class AttackEvaluation(collections.namedtuple('AttackEvaluation', [
    'directory',  # the attack result folder of the model
    'run_id',  # the run id of its summary
    'eps',  # the eps of the round evaluated, None for attacks run once
    'n_kept',  # kept examples: clean image classified correctly, adversarial wrongly
    'n_clean_correct',  # clean images classified correctly
    'auc',  # {metric: AUC in [0, 1] or None (not computable)}, normal = positives
    'roc',  # {metric: (fpr [P] float, tpr [P] float)} of the computable AUCs
    'threshold',  # detection.threshold_test's result
])):
  """One attack on one model as Table 2, its ROC figure and the thresholding test show it.

  The metrics are detection.METRICS and, with characteristics, dchar.UNSUPERVISED.
  """
  __slots__ = ()

  @property
  def success_rate(self):
    """n_kept / n_clean_correct, None without a clean-correct image (`success_rate`)."""
    return success_rate(self.n_kept, self.n_clean_correct)


# An evaluation with the arrays behind it, for the supervised detectors: `data` the attack
# round (result_files.load_attack_round), `keep` its [N] bool kept mask, `characteristics`
# a Characteristics or None.
AttackRound = collections.namedtuple('AttackRound',
                                     ['evaluation', 'data', 'keep', 'characteristics'])


def load_detectors(kernel_dir, models, dataset):
  """({model: Detector}, {model: kernel summary}) from the --mode=kernel_para files."""
  detectors, summaries = {}, {}
  for model in models:
    rce = model == model_names.model_name(True)
    params, summaries[model] = result_files.load_kernel_params(kernel_dir, rce, dataset)
    kd = detection.KernelDensity(float(params['sigma2'])).fit(params['points'],
                                                            params['point_labels'])
    detectors[model] = Detector(kd, params['medians'])
  return detectors, summaries


def _scores(data, kd, side):
  """Confidence, non-ME and log K-density (under the predicted class) of one side."""
  log_kd = kd.log_score(data['logits_' + side], data['labels_' + side])
  return {'confidence': data['confidence_' + side], 'non_me': data['entropy_' + side],
          'k_density': log_kd}


def evaluate_attack(directory, kd, thresholds, eps_round, auc_ties='half'):
  """AUCs, ROC points and the thresholding test of one attack on one model.

  Args:
    directory: the attack result folder of one model.
    kd: the model's fitted detection.KernelDensity.
    thresholds: [K] per-class K-density thresholds; K, the kernel's number of classes, is
      their length.
    eps_round: 1-based eps round of the swept attacks.
    auc_ties: how the AUCs count tied scores, one of detection.AUC_TIES (see
      detection.roc_auc).

  Returns:
    An AttackRound without characteristics.

  Raises:
    result_files.ResultsError: the results hold a class the kernel does not have.
  """
  index = result_files.round_index(result_files.load_summary(directory), eps_round)
  data = result_files.load_attack_round(directory, index)
  num_classes = len(thresholds)
  for name in ('labels_true', 'labels_nor', 'labels_adv'):
    labels = np.asarray(data[name]).reshape(-1)
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
      raise result_files.ResultsError(
          '%s: %s holds class %d, outside the %d classes of the kernel (one median each); the '
          'kernel and the attack results do not belong together'
          % (directory, name, bad[0], num_classes))
  keep = detection.kept_mask(data['labels_true'], data['labels_nor'], data['labels_adv'])
  nor, adv = _scores(data, kd, 'nor'), _scores(data, kd, 'adv')
  clean_correct = (np.asarray(data['labels_nor']).reshape(-1)
                   == np.asarray(data['labels_true']).reshape(-1))
  auc, roc = {}, {}
  for metric in detection.METRICS:
    pos, neg = nor[metric][keep], adv[metric][keep]
    auc[metric] = detection.roc_auc(pos, neg, ties=auc_ties)
    if auc[metric] is not None:
      roc[metric] = detection.roc_curve_points(pos, neg)
  threshold = detection.threshold_test(
      kd, thresholds, data['logits_nor'], data['labels_nor'], data['labels_true'],
      data['logits_adv'], data['labels_adv'])
  evaluation = AttackEvaluation(
      directory=directory, run_id=result_files.run_id(data['summary']),
      eps=data['summary']['eps'][index], n_kept=int(keep.sum()),
      n_clean_correct=int(clean_correct.sum()), auc=auc, roc=roc, threshold=threshold)
  return AttackRound(evaluation, data, keep, None)


def evaluate_attacks(found, detectors, eps_round, auc_ties='half'):
  """[(attack, {model: AttackRound})] of every attack folder, in report order.

  Args:
    found: {attack: {model: result folder}} (result_files.find_attacks).
    detectors: {model: Detector} (load_detectors).
    eps_round, auc_ties: as evaluate_attack.
  """
  rounds = []
  for attack in attack_names.ordered(found):
    per_model = {}
    for model, directory in sorted(found[attack].items()):
      detector = detectors[model]
      per_model[model] = evaluate_attack(directory, detector.kernel_density,
                                         detector.thresholds, eps_round, auc_ties)
      logging.info('%s %s: %d kept examples', attack, model,
                   per_model[model].evaluation.n_kept)
    rounds.append((attack, per_model))
  return rounds


def add_characteristics(rounds, detectors, kernel_summaries, eps_round, auc_ties, commands):
  """The rounds with the characteristics of every (attack, model) that has them, and Table
  2's unsupervised LID and Mahalanobis AUCs (dchar.UNSUPERVISED) added to its evaluation.

  Args:
    rounds: [(attack, {model: AttackRound})] (evaluate_attacks).
    detectors: {model: Detector}; kernel_summaries: {model: kernel summary}.
    eps_round, auc_ties: as evaluate_attack.
    commands: {model: the command that makes its characteristics}, for messages.

  Returns:
    New rounds, in the same order.

  Raises:
    result_files.ResultsError: characteristics of another run, kernel or eps round.
  """
  out = []
  for attack, per_model in rounds:
    added = {}
    for model, attack_round in per_model.items():
      added[model] = _with_characteristics(attack_round, detectors[model], eps_round,
                                           kernel_summaries[model], auc_ties, commands[model])
    out.append((attack, added))
  return out


def _with_characteristics(attack_round, detector, eps_round, kernel_summary, auc_ties, hint):
  evaluation, summary = attack_round.evaluation, attack_round.data['summary']
  loaded = result_files.load_characteristics(evaluation.directory, summary, kernel_summary,
                                             hint)
  if loaded is None:
    return attack_round
  arrays, chars_summary = loaded
  if chars_summary['eps_round_index'] != result_files.round_index(summary, eps_round):
    raise result_files.ResultsError(
        '%s: the characteristics are of eps round %d, detect reports round %d; remake them '
        'with: %s' % (evaluation.directory, chars_summary['eps_round_index'] + 1, eps_round,
                      hint))
  sets = dchar.characteristic_sets(arrays, detector.kernel_density, attack_round.data)
  auc, roc = dict(evaluation.auc), dict(evaluation.roc)
  for metric, (metric_auc, metric_roc) in dchar.unsupervised_aucs(
      arrays, attack_round.keep, auc_ties).items():
    auc[metric] = metric_auc
    if metric_roc is not None:
      roc[metric] = metric_roc
  return attack_round._replace(
      evaluation=evaluation._replace(auc=auc, roc=roc),
      characteristics=Characteristics(arrays, sets, result_files.run_id(chars_summary)))


def check_consistent(found, kernel_summaries, kernel_dir):
  """ResultsError unless the folders of one table belong together.

  Every attack folder of model M must come from the checkpoint its kernel was made from (the
  model fingerprint), every attack folder must have attacked the same test data, and the CE
  and RCE kernels the same training data (rce.results.consistency.check_table).
  """
  consistency.check_table(
      {attack: {model: (directory, result_files.load_summary(directory))
                for model, directory in per_model.items()} for attack, per_model in found.items()},
      kernel_summaries, kernel_dir)


def characteristics_command(dataset, model, results_dir, eps_round):
  """The command that makes a model's characteristics, for messages."""
  return ('python test_adv.py --mode=characteristics --dataset=%s --RCE_train=%s '
          '--log_root=<the %s model> --results_dir=%s --eps_round=%d'
          % (dataset, model == model_names.model_name(True), model, results_dir, eps_round))


# What detect (and the calibration of the supervised detectors) reads of the attack results:
# the folders found, each model's Detector and kernel summary, the rounds with their
# characteristics, and {model: the command that makes its characteristics}.
LoadedRounds = collections.namedtuple('LoadedRounds', ['found', 'detectors', 'kernel_summaries',
                                                       'rounds', 'commands'])


def load_rounds(results_dir, dataset, found, eps_round, auc_ties='half'):
  """The LoadedRounds of the attack folders `found` (result_files.find_attacks), checked to
  belong together, with their characteristics where there are some."""
  kernel_dir = result_files.kernel_dir(dataset, results_dir)
  detectors, kernel_summaries = load_detectors(
      kernel_dir, sorted({m for dirs in found.values() for m in dirs}), dataset)
  check_consistent(found, kernel_summaries, kernel_dir)
  commands = {m: characteristics_command(dataset, m, results_dir, eps_round)
              for m in model_names.MODELS}
  rounds = add_characteristics(evaluate_attacks(found, detectors, eps_round, auc_ties),
                               detectors, kernel_summaries, eps_round, auc_ties, commands)
  return LoadedRounds(found, detectors, kernel_summaries, rounds, commands)
