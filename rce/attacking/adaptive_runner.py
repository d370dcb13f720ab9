"""test_adv.py --mode=attack for Table 6's L-inf PGD attacks (attacks/adaptive.py).

The oblivious PGDs (pgd_ce, pgd_cw, pgd_hc) attack the classifier alone; the detector-aware
ones (pgd_lagrangian, pgd_selective, pgd_orthogonal) attack it together with the detector of
--detector, whose differentiable score is built from the same numbers as the numpy detector
that decides: a final-feature one (rce.detection.detector_graphs, from the kernel), a
supervised one (rce.detection.supervised_graphs, as --mode=calibrate fitted it) or the
ensemble of all six, sum_d max(s_d - t_d, 0) at the --attack_fpr thresholds t_d (accepted at
0: every detector accepts). Every attack runs on the logits the model predicts with (the RCE
flip included), untargeted or at the C&W target, over the data set's adaptive eps list, with
random restarts that alternate the step size, on the test rows after the calibration images
(the supervised detectors were trained on the rows before). Every run also keeps the
supervised detectors' characteristics of its clean and adversarial images, for Table 7. The
graph is built once in the restored model's graph; eps, steps and the starts are fed.
"""
import collections

from absl import logging
import numpy as np
import tensorflow as tf

from attacks import adaptive
from rce.detection import detector_graphs
from rce.detection import supervised_detectors
from rce.detection import supervised_graphs
from rce.detection import supervised_scoring
from rce.tables import attack_names

# --detector, --targeted, --pgd_steps, --pgd_restarts, --lagrange_steps, --attack_fpr.
AdaptiveParams = collections.namedtuple('AdaptiveParams', [
    'detector', 'targeted', 'steps', 'restarts', 'lagrange_steps', 'attack_fpr'])
DEFAULT_PARAMS = AdaptiveParams('k_density', False, adaptive.STEPS, 2, adaptive.LAGRANGE_STEPS,
                                0.05)

# What attacks/adaptive.py passes as the "feature" to the score: the images, the final
# feature and every layer output (the supervised detectors read them all).
Outputs = collections.namedtuple('Outputs', ['x', 'feature', 'layers'])


def outputs_model_fn(layers_fn):
  """model_fn(x) -> (prediction logits, Outputs) of a restored model's layers_fn."""
  def model_fn(x):
    logits, feature, layers = layers_fn(x)
    return logits, Outputs(x, feature, layers)
  return model_fn


class DetectorGraphs(object):
  """The differentiable score of every detector of a calibration, by Table 6 name.

  Built in the restored model's graph before it is finalized. Final-feature detectors score
  the feature; supervised ones every layer (their LID reference outputs and Mahalanobis
  statistics computed once); the ensemble sums each member's score above its threshold at
  `fpr`, so its threshold is 0.
  """

  def __init__(self, model, calibration, stats, fpr):
    self.calibration, self.fpr = calibration, fpr
    self.scorer = self.context = None
    if calibration.supervised:
      k_density = calibration.detectors['k_density']
      self.scorer = supervised_scoring.SupervisedScorer(model, stats, k_density)
      self.context = supervised_graphs.GraphContext(
          lambda x: model.layers_fn(x)[2], stats, k_density.params(),
          self.scorer.reference_outputs)

  def check(self, name):
    """ValueError unless the calibration holds what `name` needs."""
    needed = (attack_names.ENSEMBLE_MEMBERS if name == attack_names.ENSEMBLE else [name])
    missing = [n for n in needed if n not in self.calibration.thresholds]
    if missing:
      raise ValueError(
          '--detector=%s needs the calibrated %s, which %s does not hold: the supervised '
          'detectors need test_adv.py --mode=characteristics of %s on this model, then '
          '--mode=calibrate' % (name, ', '.join(missing), self.calibration.directory,
                                supervised_detectors.TRAINED_ON))

  def threshold(self, name):
    return 0.0 if name == attack_names.ENSEMBLE else self.calibration.threshold(name,
                                                                               self.fpr)

  def score(self, name, outputs, classes):
    """[B] score tensor of detector `name` on Outputs `outputs` under `classes`."""
    if name == attack_names.ENSEMBLE:
      return tf.add_n([tf.nn.relu(self.score(m, outputs, classes) - self.threshold(m))
                       for m in attack_names.ENSEMBLE_MEMBERS])
    if name in self.calibration.supervised:
      return supervised_graphs.score_graph(self.calibration.supervised[name], self.context,
                                           outputs.x, outputs.layers, classes)
    return detector_graphs.score_graph(self.calibration.detectors[name], outputs.feature,
                                       classes)

  def score_fn(self, name):
    """score_fn(logits, outputs, classes) of attacks/adaptive.py for detector `name`."""
    return lambda logits, outputs, classes: self.score(name, outputs, classes)

  def characteristics(self, images, adv_rounds, predict, batch_size=100):
    """{'{name}_nor': [N, F], '{name}_adv': [R, N, F]} of every supervised detector, each
    image under its predicted class (`predict(images)` -> [N]); {} without any."""
    if self.scorer is None:
      return {}
    out = {}
    classes = predict(images)
    adv_classes = [predict(adv) for adv in adv_rounds]
    for name, detector in self.calibration.supervised.items():
      out[name + '_nor'] = self.scorer.characteristics(detector, images, classes, batch_size)
      out[name + '_adv'] = np.stack([
          self.scorer.characteristics(detector, adv, c, batch_size)
          for adv, c in zip(adv_rounds, adv_classes)])
    return out


class AdaptiveAttack(object):
  """One of Table 6's attacks on the restored model, built before the graph is finalized.

  `calibration` (rce.detection.calibration.Calibration) gives the detectors, their
  thresholds and the rows to attack; `stats` {layer: (means, precision)} the Mahalanobis
  statistics of the kernel (the supervised detectors' graphs and characteristics).
  """

  def __init__(self, model, spec, params, calibration, stats):
    self.model, self.spec = model, spec
    self.params = params.adaptive or DEFAULT_PARAMS
    self.batch_size = params.batch_size
    self.seed = params.seed
    method = spec.info.adaptive
    self.graphs = DetectorGraphs(model, calibration, stats, self.params.attack_fpr)
    self.detector = self.threshold = score_fn = None
    if method != 'oblivious':
      self.detector = self.params.detector
      self.graphs.check(self.detector)
      self.threshold = self.graphs.threshold(self.detector)
      score_fn = self.graphs.score_fn(self.detector)
    self.pgd = adaptive.AdaptivePGD(outputs_model_fn(model.layers_fn), score_fn,
                                    model.images.shape.as_list()[1:], method,
                                    spec.info.pgd_loss, self.params.targeted, model.graph)

  def settings(self):
    """The attack's settings, for its summary."""
    p = self.params
    return {'method': self.spec.info.adaptive, 'loss': self.spec.info.pgd_loss,
            'detector': p.detector if self.detector is not None else None,
            'targeted': bool(p.targeted), 'steps': p.steps, 'restarts': p.restarts,
            'step_fractions': [list(f) for f in adaptive.default_step_fractions(p.steps)],
            'lagrange_steps': p.lagrange_steps if self.spec.info.adaptive == 'lagrangian'
                              else 0,
            'attack_fpr': p.attack_fpr if self.detector is not None else None,
            'ensemble_of': (list(attack_names.ENSEMBLE_MEMBERS)
                            if self.detector == attack_names.ENSEMBLE else None),
            'threshold': self.threshold, 'random_start': True}

  def run(self, images, labels, targets, eps_list, progress):
    """Adversarial images [R, N, ...] for each eps, and per-round statistics of the attack."""
    aims = targets if self.params.targeted else labels
    rounds, stats = [], []
    for eps in eps_list:
      adv, info = self.pgd.attack(
          self.model.sess, images, aims, eps, restarts=self.params.restarts,
          steps=self.params.steps, seed=self.seed, threshold=self.threshold,
          batch_size=self.batch_size, lagrange_steps=self.params.lagrange_steps)
      rounds.append(adv)
      record = {'eps': eps, 'success_rate': float(np.mean(info['success']))}
      if info['evaded'] is not None:
        record['evaded_rate'] = float(np.mean(info['evaded']))
        record['mean_score'] = float(np.mean(info['score']))
      stats.append(record)
      logging.info('%s at eps %g: success %.4f%s', self.spec.info.name, eps,
                   record['success_rate'],
                   ', accepted at the %g threshold too: %.4f' % (
                       self.params.attack_fpr, record['evaded_rate'])
                   if 'evaded_rate' in record else '')
      progress.update(len(images))
    return np.stack(rounds), stats

  def supervised_characteristics(self, images, adv_rounds):
    """DetectorGraphs.characteristics of the clean images and every round (numpy)."""
    def predict(x):
      return self.model.outputs(x, self.batch_size)[0].argmax(axis=1)
    return self.graphs.characteristics(images, adv_rounds, predict, self.batch_size)


def check_unsharded(spec, num_shards):
  """ValueError: the adaptive attacks' random starts are drawn over the whole image set."""
  if num_shards > 1:
    raise ValueError('--attack_method=%s runs unsharded (its random starts are drawn over '
                     'all attacked images): drop --num_shards' % spec.info.name)

