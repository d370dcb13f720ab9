"""Table 2, the thresholding test and the ROC figures of detect, from the attack evaluations.

Assembles the rows and curves of rce.detection.attack_evaluation's records for
report_render (no score is computed here): the attack titles with their eps, the text under
Table 2, and what an empty ROC panel says.
"""
import collections

from rce.detection import detect_characteristics as dchar
from rce.detection import detection
from rce.reports import report_render
from rce.tables import attack_names
from rce.tables import models

# The sentence under Table 2 naming the tie rule of its AUCs, per detection.AUC_TIES.
AUC_TIES_NOTE = {
    'half': 'AUC ties: half credit (rank statistic).',
    'original': 'AUC ties: counted against the normal example, as the original\'s AUC.m.',
}
UNSUPERVISED_NOTE = (' Mahalanobis (Lee et al.) and LID (Ma et al.): unsupervised, on the '
                     'final 64-d feature, Mahalanobis without input pre-processing, LID within '
                     'minibatches of normal examples.')
THRESHOLD_TITLE = 'Thresholding test (per-class threshold: training median K-density)'

# One ROC PNG: its file name, the curves and empty-panel notes of report_render.plot_roc,
# and its title.
RocFigure = collections.namedtuple('RocFigure', ['name', 'curves', 'empty_notes', 'title'])


def metrics(unsupervised):
  """Table 2's score columns: detection.METRICS, then LID and Mahalanobis when there are
  characteristics (`unsupervised`)."""
  return detection.METRICS + (dchar.UNSUPERVISED if unsupervised else ())


def attack_title(attack, per_model):
  """The attack's title with the eps of its evaluated round, 'FGSM (eps 0.04)'."""
  title = attack_names.title(attack)
  eps = sorted({e.eps for e in per_model.values() if e.eps is not None})
  if eps:
    title += ' (eps %s)' % '/'.join('%g' % e for e in eps)
  return title


def table2(evaluations, dataset, score_metrics):
  """Table 2 (report_tables.Table) of [(attack, {model: AttackEvaluation})]."""
  rows = [report_render.Table2Row(
      attack_title(attack, per_model),
      {(m, model): e.auc[m] for model, e in per_model.items()
       for m in score_metrics if m in e.auc},
      {model: e.n_kept for model, e in per_model.items()},
      {model: e.success_rate for model, e in per_model.items()})
          for attack, per_model in evaluations]
  return report_render.table2(
      rows, title='AUC of detection on %s (rows: attacks; normal = positives)' % dataset,
      metrics=score_metrics)


def markdown(table, evaluations, eps_round, auc_ties, unsupervised):
  """table2.md: Table 2, what its columns mean, and the thresholding test."""
  thresholds = report_render.threshold_table(
      [(attack_names.title(attack), {model: e.threshold for model, e in per_model.items()})
       for attack, per_model in evaluations], title=THRESHOLD_TITLE)
  return (table.markdown() + '\nK-density under the predicted class; kept examples: normal '
          'classified correctly and adversarial misclassified. Swept attacks at eps round %d. '
          '%s%s\n\n' % (eps_round, AUC_TIES_NOTE[auc_ties],
                        UNSUPERVISED_NOTE if unsupervised else '') + thresholds.markdown())


def no_curve_note(evaluation):
  """What an empty ROC panel says: no results of the model, or too few kept examples."""
  if evaluation is None:
    return 'no results of this model'
  if evaluation.n_kept == 0:
    if evaluation.n_clean_correct == 0:
      return 'no kept examples\n(no clean image classified correctly)'
    return ('no kept examples\n(the attack fooled none of the\n%d clean-correct images)'
            % evaluation.n_clean_correct)
  return 'no ROC curve: %d kept example%s' % (evaluation.n_kept,
                                             '' if evaluation.n_kept == 1 else 's')


def roc_figures(evaluations, dataset, score_metrics):
  """[RocFigure] of the attacks with at least one curve (two empty panels say nothing)."""
  figures = []
  for attack, per_model in evaluations:
    curves = {model: {m: (e.roc[m][0], e.roc[m][1], e.auc[m])
                      for m in score_metrics if m in e.roc} for model, e in per_model.items()}
    if any(curves.values()):
      notes = {model: no_curve_note(per_model.get(model))
               for model in models.MODELS if not curves.get(model)}
      figures.append(RocFigure('roc_%s.png' % attack, curves, notes, 'ROC, %s on %s' % (
          attack_title(attack, per_model), dataset)))
  return figures
