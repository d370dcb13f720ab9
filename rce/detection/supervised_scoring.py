"""The characteristics a supervised detector decides on, of any images (restored model + numpy).

The same computation as --mode=characteristics (characteristics_runner: the LayerModel's
layer outputs and Lee et al.'s pre-processing step, characteristics.lid_mle and
mahalanobis_scores), for the detectors of supervised_detectors.py: LID against their fixed
reference minibatch (no row left out: a query is never one of the reference images), the
Mahalanobis score at their one chosen eps, the log K-density of the final feature under the
class asked. detector.score(characteristics(...)) is the detector's decision.
"""
import numpy as np

from rce.detection import characteristics
from rce.detection import characteristics_runner


class SupervisedScorer(object):
  """Characteristics of numpy images for supervised detectors, on one restored model.

  Build it before the model's graph is finalized (the LayerModel adds the pre-processing
  steps); `stats` {layer: (means, precision)} from the kernel, `k_density` the model's
  final_feature_detectors.KDensityDetector (its score is minus the log K-density that
  supervised K-density decides on).
  """

  def __init__(self, model, stats, k_density):
    self.layer_model = characteristics_runner.LayerModel(model, stats)
    self.stats = stats
    self.k_density = k_density
    self._references = {}

  def _check_layers(self, detector):
    if detector.kind != 'k_density' and detector.layers != self.layer_model.names:
      raise ValueError('%s was fitted on the layers %s, the model has %s'
                       % (detector.name, detector.layers, self.layer_model.names))

  def reference_outputs(self, detector, batch_size=100):
    """[R, D_l] flattened layer outputs of a LID detector's reference images (computed once)."""
    key = id(detector)
    if key not in self._references:
      self._references[key] = self.layer_model.outputs(detector.reference_images, pooled=False,
                                                       batch_size=batch_size)
    return self._references[key]

  def characteristics(self, detector, images, classes, batch_size=100):
    """[N, F] characteristics of `images` for `detector`; `classes` [N] (the predicted
    class, or the one asked) matter to K-density only."""
    self._check_layers(detector)
    if detector.kind == 'k_density':
      _, features = self.layer_model.model.outputs(images, batch_size)
      return -self.k_density.score(features, np.asarray(classes))[:, None]
    if detector.kind == 'mahalanobis':
      return characteristics_runner.mahalanobis_at(self.layer_model, self.stats, images,
                                                   detector.eps, batch_size)
    flat = self.layer_model.outputs(images, pooled=False, batch_size=batch_size)
    reference = self.reference_outputs(detector, batch_size)
    return np.stack([characteristics.lid_mle(q, r, detector.lid_k)
                     for q, r in zip(flat, reference)], axis=1)

  def scores(self, detector, images, classes, batch_size=100):
    """[N] decision values of `detector` on `images` (higher = more suspicious)."""
    return detector.score(self.characteristics(detector, images, classes, batch_size))
