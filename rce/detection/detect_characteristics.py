"""LID and Mahalanobis next to K-density in --mode=detect, on CE and RCE, two protocols.

* Unsupervised (scored like K-density, nothing trained): Mahalanobis on the final 64-d
  feature without pre-processing and LID on the final feature, two more Table 2 columns.
* Supervised, Table 4: per model, attack and detector a logistic regression on the per-layer
  characteristics, as Ma et al. 2018 and Lee et al. 2018 fit it (K-density: its one score;
  LID: every layer, MinMaxScaler first; Mahalanobis: every layer, at the pre-processing eps
  chosen on a validation part), scored by AUROC (both papers) and the detection rate at 5 %
  false positives on normal inputs (Lee et al.'s "TNR at TPR 95 %"). Positives are the
  adversarial versions of the kept examples (clean classified correctly, adversarial
  misclassified), negatives their normal and noisy versions.
* Table 5, unseen attacks: the detectors trained on FGSM's training part, scored on every
  attack's test part.

The split is this suite's own protocol, not either paper's: Ma et al. report AUROC only;
Lee et al. fit on a small held-out part (10 % of the examples, half to fit the regression,
half to choose eps) and test on the rest. Here one seeded 80/20 split of the test images,
stratified by class, serves every attack and both models, so the three versions of an image,
and the same image under two attacks, are never on both sides (the attacks share their
images); eps is chosen on a quarter of the training part, and the regression is then refit
on the whole training part. TensorFlow-free; the characteristics come from
test_adv.py --mode=characteristics (characteristics_runner.py).
"""
import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from rce.detection import characteristics
from rce.detection import detection

DETECTORS = ('k_density', 'lid', 'mahalanobis')
DETECTOR_NAMES = {'k_density': 'K-density', 'lid': 'LID', 'mahalanobis': 'Mahalanobis'}
# Table 2's extra columns (metric keys next to detection.METRICS; higher = more normal).
UNSUPERVISED = ('mahalanobis_feature', 'lid_feature')  # titles: report_render.METRIC_NAMES
TEST_FRACTION = 0.2
VALIDATION_FRACTION = 0.25  # of the training part, to choose Mahalanobis' eps
SEEN_ATTACK = 'fgsm'  # Table 5 trains on it
VERSIONS = (('normal', 'normal'), ('adv', 'adversarial'), ('noisy', 'noisy'))


def _layer(chars, name='feature'):
  return list(chars['layers']).index(name)


def unsupervised_scores(chars, side):
  """{UNSUPERVISED metric: [N]} of 'normal' or 'adv', higher = more normal (as detection)."""
  li = _layer(chars)
  return {'mahalanobis_feature': chars['mahalanobis_' + side][:, li, 0],
          'lid_feature': -chars['lid_' + side][:, li]}


def example_split(labels_true, seed=0):
  """(train examples, test examples, stratified?): 80/20 of the attacked images, seeded,
  stratified by true class (unstratified when a class has a single image)."""
  labels_true = np.asarray(labels_true).reshape(-1)
  try:
    train, test = characteristics.stratified_split(labels_true, TEST_FRACTION, seed)
    return train, test, True
  except ValueError:
    train, test = train_test_split(np.arange(labels_true.size), test_size=TEST_FRACTION,
                                   random_state=seed)
    return np.sort(train), np.sort(test), False


def characteristic_sets(chars, kd, data):
  """{detector: {'normal'|'adv'|'noisy': [N, F] or [N, L, E] (Mahalanobis)}}.

  `kd` is the model's fitted KernelDensity; `data` the attack round (result_files): the
  normal and adversarial log K-densities under the predicted class come from it, the noisy
  ones from the characteristics' noisy logits and features.
  """
  noisy_pred = np.argmax(chars['noisy_logits'], axis=1)
  log_kd = {'normal': kd.log_score(data['logits_nor'], data['labels_nor']),
            'adv': kd.log_score(data['logits_adv'], data['labels_adv']),
            'noisy': kd.log_score(chars['noisy_feature'], noisy_pred)}
  return {'k_density': {s: log_kd[s][:, None] for s in log_kd},
          'lid': {s: chars['lid_' + s] for s in log_kd},
          'mahalanobis': {s: chars['mahalanobis_' + s] for s in log_kd}}


def _rows(sets, keep, eps_index=None):
  """(X, y, example) of the protocol; Mahalanobis at one pre-processing eps."""
  pick = (lambda a: a[:, :, eps_index]) if eps_index is not None else (lambda a: a)
  return characteristics.supervised_dataset(pick(sets['normal']), pick(sets['adv']),
                                            pick(sets['noisy']), keep)


def _choose_eps(sets, keep, train_examples, seed):
  """The Mahalanobis pre-processing eps (index) with the best validation AUROC: trained on
  75 % of the training examples, validated on the rest; the smallest eps wins ties."""
  kept_train = np.intersect1d(np.flatnonzero(keep), train_examples)
  if kept_train.size < 4:
    return 0, None
  fit_ex, val_ex = train_test_split(kept_train, test_size=VALIDATION_FRACTION,
                                    random_state=seed)
  best, aurocs = 0, []
  for e in range(sets['normal'].shape[2]):
    x, y, ex = _rows(sets, keep, e)
    fit, val = np.isin(ex, fit_ex), np.isin(ex, val_ex)
    result = characteristics.supervised_detector(x[fit], y[fit], x[val], y[val], seed=seed)
    aurocs.append(result['auroc'])
    if result['auroc'] is not None and (aurocs[best] is None or result['auroc'] > aurocs[best]):
      best = e
  return best, aurocs


def supervised(detector, sets, keep, train_examples, test_examples, seed=0):
  """Table 4 cell of one detector, model and attack.

  Returns dict: auroc, detected_at_fpr5 (None with 'reason' when not computable), model (the
  fitted pipeline or None), eps_index (Mahalanobis), and per row: example, y, test flag,
  score (decision function, higher = more adversarial; None without a model).
  """
  eps_index, validation = None, None
  if detector == 'mahalanobis':
    eps_index, validation = _choose_eps(sets, keep, train_examples, seed)
  x, y, example = _rows(sets, keep, eps_index)
  train, test = np.isin(example, train_examples), np.isin(example, test_examples)
  result = characteristics.supervised_detector(x[train], y[train], x[test], y[test],
                                               min_max=detector == 'lid', seed=seed)
  model = result.get('model')
  return {'auroc': result['auroc'], 'detected_at_fpr5': result['detected_at_fpr5'],
          'reason': result.get('reason'), 'model': model, 'eps_index': eps_index,
          'validation_aurocs': validation, 'example': example, 'y': y, 'test': test,
          'score': model.decision_function(x) if model is not None else None}


def transfer_auroc(trained, sets, keep, test_examples):
  """AUROC of a detector trained on another attack (Table 5) on this attack's test part."""
  if trained['model'] is None:
    return None, 'not trained on %s: %s' % (SEEN_ATTACK, trained['reason'])
  x, y, example = _rows(sets, keep, trained['eps_index'])
  test = np.isin(example, test_examples)
  if np.unique(y[test]).size < 2:
    return None, 'test part has no kept example'
  return float(roc_auc_score(y[test], trained['model'].decision_function(x[test]))), None


def flagged(result):
  """Bool per row: score above the threshold that accepts 95 % of the test part's normal and
  noisy rows (characteristics.fpr_threshold at 5 %), or None without a fitted detector."""
  if result['score'] is None:
    return None
  normal = result['score'][result['test'] & (result['y'] == 0)]
  return result['score'] > characteristics.fpr_threshold(normal, 0.05)


def unsupervised_aucs(chars, keep, auc_ties):
  """{metric: (AUC or None, ROC points or None)} of Table 2's extra columns."""
  nor, adv = unsupervised_scores(chars, 'normal'), unsupervised_scores(chars, 'adv')
  out = {}
  for metric in UNSUPERVISED:
    auc = detection.roc_auc(nor[metric][keep], adv[metric][keep], ties=auc_ties)
    out[metric] = (auc, detection.roc_curve_points(nor[metric][keep], adv[metric][keep])
                   if auc is not None else None)
  return out
