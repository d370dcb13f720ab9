"""Tables 4 and 5 and per_example_scores.csv of detect, rendered from a SupervisedEvaluation.

Table 4: per attack and supervised detector, AUROC and detected at 5 % FPR of each model;
its notes give the split, the reason of every n/c cell of both tables and the chosen
Mahalanobis eps. Table 5: the detectors trained on FGSM, on every attack. The computing is
rce.detection.supervised_evaluation's.
"""
from rce.detection import detect_characteristics as dchar
from rce.detection import supervised_evaluation
from rce.reports import report_tables
from rce.tables import attack_names
from rce.tables import models

TABLE4_TITLE = ('Table 4: supervised detection (LID of Ma et al., Mahalanobis of Lee et al.), '
                "AUROC and detected at 5 % FPR (Lee et al.'s TNR at TPR 95 %)")
# Table 4's second metric (characteristics.detected_at_fpr at 5 %), per model.
DETECTED_COLUMN = 'detected at 5 %% FPR %s'
PROTOCOL_NOTE = (
    'Per model, attack and detector a logistic regression (scikit-learn LogisticRegressionCV)'
    ' on the characteristics: K-density its log density under the predicted class; LID '
    'every layer (input, the three stages, the feature; MinMaxScaler first); Mahalanobis '
    'every layer (class means and shared covariance of the training features, input '
    'pre-processing eps chosen on a quarter of the training part, then refit on all of it).'
    ' Positives: the adversarial versions of the kept examples; negatives: their normal and'
    ' noisy versions (Gaussian noise with the kept adversarial examples\' mean L2; for JSMA'
    ' as many pixels set to the maximum as the attack changed). The split, the stratification'
    ' and the refit are this suite\'s protocol (Lee et al. fit on 10 % of the data).')
DETECTED_NOTE = (
    "Detected at 5 % FPR: Lee et al.'s TNR at TPR 95 % (their calculate_log.py takes the normal "
    'and noisy test rows as positives): the share of adversarial test rows flagged at the '
    'threshold that accepts at least 95 % of the normal and noisy test rows. Ties: a row '
    'scoring exactly the threshold is accepted, adversarial or not (a tie counts against the '
    'detector). per_example_scores.csv flags rows at that threshold.')
TABLE5_TITLE = 'Table 5: unseen attacks (detectors trained on FGSM), AUROC'


def _label(attack, detector):
  return '%s: %s' % (attack_names.title(attack), dchar.DETECTOR_NAMES[detector])


def tables(attacks, evaluation, commands):
  """(Table 4, Table 5) as report_tables.Table values, titled, with their notes.

  Args:
    attacks: the attacks in table order (every attack detect read).
    evaluation: their supervised_evaluation.SupervisedEvaluation.
    commands: {model: the command that makes its characteristics}, named by the note of the
      cells without characteristics.
  """
  reasons, missing, rows4, rows5 = [], {}, [], []
  for attack in attacks:
    for det in dchar.DETECTORS:
      cells = {}
      for model in models.MODELS:
        where = '%s %s' % (attack_names.title(attack), model)
        score = evaluation.detectors.get((attack, model, det))
        if score is None:
          missing.setdefault(model, []).append(attack_names.title(attack))
          cells[model] = (None, None)
          continue
        if score.auroc is None:
          reasons.append(('Table 4', score.reason, where))
        cells[model] = (score.auroc, score.detected_at_fpr5)
      rows4.append((_label(attack, det), [cells[m][0] for m in models.MODELS]
                    + [cells[m][1] for m in models.MODELS]))
  for attack in attacks:
    for det in dchar.DETECTORS:
      row = []
      for model in models.MODELS:
        score = evaluation.transfer.get((attack, model, det))
        if score is not None and score.reason:
          reasons.append(('Table 5', score.reason, '%s %s' % (attack_names.title(attack),
                                                              model)))
        row.append(None if score is None else score.auroc)
      seen = ' (seen)' if attack == dchar.SEEN_ATTACK else ''
      rows5.append((_label(attack, det) + seen, row))
  for model, titles in sorted(missing.items()):
    reasons.append(('Tables 4 and 5', 'no results or characteristics (make them with: %s)'
                    % commands[model], ', '.join('%s %s' % (a, model) for a in sorted(
                        set(titles), key=titles.index))))
  split = evaluation.split
  notes4 = ['Split: %d of the %d attacked images for training, %d for testing (seeded, %s); '
            'one split for every attack and both models.' % (
                len(split.train), split.num_images, len(split.test),
                'stratified by class' if split.stratified else 'not stratified: a class has '
                'one image')] + _reason_notes(reasons)
  chosen = ['%s %s %g' % (attack_names.title(attack), model, evaluation.chosen_eps[
      (attack, model)].eps) for attack in attacks for model in models.MODELS
            if (attack, model) in evaluation.chosen_eps]
  if chosen:
    notes4.append('Mahalanobis pre-processing eps chosen: %s.' % ', '.join(chosen))
  notes5 = []
  if dchar.SEEN_ATTACK not in attacks:
    notes5.append('n/c: no %s results to train on.' % attack_names.title(dchar.SEEN_ATTACK))
  table4 = report_tables.Table(
      'Table 4', [('AUROC %s' % m, '%.4f') for m in models.MODELS]
      + [(DETECTED_COLUMN % m, '%.4f') for m in models.MODELS], rows4,
      first='Attack: detector', notes=notes4 + [PROTOCOL_NOTE, DETECTED_NOTE],
      title=TABLE4_TITLE)
  table5 = report_tables.Table('Table 5', [('AUROC %s' % m, '%.4f') for m in models.MODELS],
                               rows5, first='Attack: detector (trained on FGSM)', notes=notes5,
                               title=TABLE5_TITLE)
  return table4, table5


def _reason_notes(reasons):
  """'n/c' lines, one per (table, reason), naming the attacks and models it applies to."""
  grouped = {}
  for table, reason, where in reasons:
    places = grouped.setdefault((table, reason), [])
    if where not in places:
      places.append(where)
  return ['n/c in %s (%s): %s.' % (table, ', '.join(places), reason)
          for (table, reason), places in grouped.items()]


def markdown(table4, table5):
  """Tables 4 and 5 with their titles and notes, as detect writes them (table4_5.md)."""
  return table4.markdown() + '\n' + table5.markdown()


def no_characteristics_text(commands):
  """What detect says instead of Tables 4 and 5 when no attack has characteristics."""
  return ('\nTables 4 and 5 (LID and Mahalanobis, supervised) need the characteristics of the '
          'attacks: %s\n' % ' and '.join(commands[m] for m in models.MODELS))


def examples_table(examples):
  """per_example_scores.csv as a Table (written as CSV only), from [ExampleScores]: one row
  per example and version, empty where a supervised detector has no score."""
  fields = supervised_evaluation.ExampleScores._fields
  return report_tables.Table(
      'Per-example scores', [(name, '%s') for name in fields[1:]],
      [(e[0], [report_tables.MISSING if v is None else v for v in e[1:]]) for e in examples],
      first=fields[0])
