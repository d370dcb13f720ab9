"""Differentiable TensorFlow scores of the supervised detectors (graph mode).

`score_graph(detector, context, x, layers, classes)` builds a [B] float32 tensor equal to
supervised_scoring's decision (`detector.score(characteristics)`), differentiable w.r.t. the
images x, from the detector's numbers as constants:
  * K-density: the log K-density graph of the final feature (detector_graphs);
  * LID: each layer's LID against the reference minibatch's outputs (computed once, numpy),
    the k neighbours chosen by value each call, squared distances in float64 from
    |f|^2 + |r|^2 - 2 f.r (the difference of a [B, R, D] stage layer does not fit in memory);
  * Mahalanobis: each layer's Lee et al. score at its pre-processed images
    x_l' = x + eps * sign(grad_x score_l(x)). The sign has zero derivative almost everywhere,
    so the step enters as a constant (stop_gradient) and the score's gradient at x_l' passes
    to x unchanged: BPDA (Athalye et al. 2018), here also the exact almost-everywhere
    derivative;
then the regression, (c * scale + offset) . coef + intercept, in float64.
"""
import collections

import numpy as np
import tensorflow as tf

from rce.detection import characteristics_runner
from rce.detection import detector_graphs

# What the graphs need besides the detector: `layers_fn(x)` -> {layer: tensor} of the same
# network (shared variables, eval mode), the Mahalanobis statistics {layer: (means,
# precision)}, the K-density params (final_feature_detectors.KDensityDetector.params()) and
# `reference_outputs(detector)` -> [[R, D_l] numpy per layer] of a LID detector.
GraphContext = collections.namedtuple('GraphContext', ['layers_fn', 'stats', 'kd_params',
                                                       'reference_outputs'])


def _lee_score(pooled, means, precision):
  """[B] Lee et al.'s score max_c -0.5 (f - mu_c)^T P (f - mu_c) (higher = more normal)."""
  return -detector_graphs.build('mahalanobis', {'means': means, 'precision': precision},
                                pooled, None)


def preprocessed(x, score, eps):
  """Lee et al.'s step as characteristics_runner.LayerModel takes it: x + eps per pixel up
  where grad_x score > 0, down elsewhere; the step is a constant for the gradient (BPDA)."""
  grad = tf.gradients(tf.reduce_sum(score), x)[0]
  direction = tf.where(grad > 0, tf.ones_like(grad), -tf.ones_like(grad))
  return x + tf.stop_gradient(eps * direction)


def _mahalanobis(detector, context, x, layers):
  columns = []
  for name in detector.layers:
    means, precision = context.stats[name]
    score = _lee_score(characteristics_runner.pool_layer(layers[name]), means, precision)
    if detector.eps:
      moved = preprocessed(x, score, np.float32(detector.eps))
      score = _lee_score(characteristics_runner.pool_layer(context.layers_fn(moved)[name]),
                         means, precision)
    columns.append(score)
  return tf.stack(columns, axis=1)


def _lid(detector, context, layers):
  columns = []
  for name, reference in zip(detector.layers, context.reference_outputs(detector)):
    flat = tf.cast(tf.reshape(layers[name], [tf.shape(layers[name])[0], -1]), tf.float64)
    ref = tf.constant(np.asarray(reference, np.float64))
    d2 = (tf.reduce_sum(tf.square(flat), axis=1, keepdims=True)
          + tf.reduce_sum(tf.square(ref), axis=1)[None] - 2.0 * tf.matmul(flat, ref,
                                                                          transpose_b=True))
    columns.append(detector_graphs.lid_from_squared_distances(tf.maximum(d2, 0.0),
                                                              detector.lid_k))
  return tf.stack(columns, axis=1)


def characteristics_graph(detector, context, x, layers, classes):
  """[B, F] characteristics of `detector` (supervised_scoring's, as tensors)."""
  if detector.kind == 'k_density':
    return -detector_graphs.build('k_density', context.kd_params, layers['feature'],
                                  classes)[:, None]
  if detector.kind == 'mahalanobis':
    return _mahalanobis(detector, context, x, layers)
  return _lid(detector, context, layers)


def score_graph(detector, context, x, layers, classes):
  """[B] float32 decision value of a supervised detector, differentiable in x.

  Args:
    detector: a supervised_detectors.SupervisedDetector.
    context: GraphContext.
    x: [B, H, W, C] images; layers: {layer: tensor} of x (the forward pass already built).
    classes: [B] int, the class K-density scores under.
  """
  with tf.name_scope('%s_score' % detector.name):
    chars = tf.cast(characteristics_graph(detector, context, x, layers, classes), tf.float64)
    linear = (chars * detector.scale + detector.offset) @ detector.coef[:, None]
    return tf.cast(linear[:, 0] + detector.intercept, tf.float32)
