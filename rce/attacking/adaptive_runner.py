"""test_adv.py --mode=attack for Table 6's L-inf PGD attacks (attacks/adaptive.py).

The oblivious PGDs (pgd_ce, pgd_cw, pgd_hc) attack the classifier alone; the detector-aware
ones (pgd_lagrangian, pgd_selective, pgd_orthogonal) attack it together with the detector of
--detector, whose differentiable score (rce.detection.detector_graphs) is built from the same
kernel and calibration as the numpy detector that decides. Every attack runs on the logits
the model predicts with (the RCE flip included), untargeted or at the C&W target, over the
data set's adaptive eps list, with random restarts that alternate the step size. The graph is
built once in the restored model's graph; eps, steps and the starts are fed.
"""
import collections

from absl import logging
import numpy as np

from attacks import adaptive
from rce.detection import detector_graphs

# --detector, --targeted, --pgd_steps, --pgd_restarts, --lagrange_steps, --attack_fpr.
AdaptiveParams = collections.namedtuple('AdaptiveParams', [
    'detector', 'targeted', 'steps', 'restarts', 'lagrange_steps', 'attack_fpr'])
DEFAULT_PARAMS = AdaptiveParams('k_density', False, adaptive.STEPS, 2, adaptive.LAGRANGE_STEPS,
                                0.05)


def _score_fn(detector):
  """score_fn(logits, feature, classes) of attacks/adaptive.py for a numpy detector."""
  return lambda logits, feature, classes: detector_graphs.score_graph(detector, feature,
                                                                      classes)


class AdaptiveAttack(object):
  """One of Table 6's attacks on the restored model, built before the graph is finalized.

  `calibration` (rce.detection.calibration.Calibration) gives the detector and its threshold;
  None is allowed for the oblivious attacks, which never ask a detector.
  """

  def __init__(self, model, spec, params, calibration=None):
    self.model, self.spec = model, spec
    self.params = params.adaptive or DEFAULT_PARAMS
    self.batch_size = params.batch_size
    self.seed = params.seed
    method = spec.info.adaptive
    self.detector = None
    self.threshold = None
    if method != 'oblivious':
      if calibration is None:
        raise ValueError('%s needs the calibrated detector thresholds' % spec.info.name)
      self.detector = calibration.detectors[self.params.detector]
      self.threshold = calibration.threshold(self.params.detector, self.params.attack_fpr)
    score_fn = _score_fn(self.detector) if self.detector is not None else None
    self.pgd = adaptive.AdaptivePGD(model.model_fn, score_fn,
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


def check_unsharded(spec, num_shards):
  """ValueError: the adaptive attacks' random starts are drawn over the whole image set."""
  if num_shards > 1:
    raise ValueError('--attack_method=%s runs unsharded (its random starts are drawn over '
                     'all attacked images): drop --num_shards' % spec.info.name)

