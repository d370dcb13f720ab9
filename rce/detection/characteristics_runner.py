"""test_adv.py --mode=characteristics: LID and Mahalanobis characteristics of attack results.

For one model and each of its attack result folders, per example, for the normal image, the
adversarial image (the eps round detect reports) and a noisy copy of the normal image (Ma et
al.'s negatives: Gaussian noise with the mean L2 of the attack's successful examples; for an L0
attack, JSMA, as many random pixels set to the image maximum as the attack changed):
  * LID (Ma et al. 2018) of every layer output (flattened) within minibatches of normal
    examples (characteristics.lid_characteristics);
  * the Mahalanobis score (Lee et al. 2018) of every layer output, globally average-pooled,
    under the class means and shared covariance of the training set (made by
    --mode=kernel_para, kept in the kernel file), after Lee et al.'s input pre-processing
    x + eps * sign(grad_x score) for each eps of MAHALANOBIS_EPS (0: none), not clipped to
    the image range (as Lee et al.: the step is part of the detector, not an image);
  * the noisy copies' prediction logits and feature, for their K-density.
They go into {attack folder}/characteristics/ (npz without pickle, summary with provenance and
checksums), tied to the attack folder's and the kernel's run ids.
"""
import collections
import os

import numpy as np
import tensorflow as tf

from rce.tables import attack_names
import attacks
from rce.detection import characteristics
from rce.detection import detection
from rce.results import result_files

tf1 = tf.compat.v1

# Lee et al.'s pre-processing magnitudes; detect picks one per model and attack on the
# training split (0.0 is no pre-processing).
MAHALANOBIS_EPS = (0.0, 0.0005, 0.001, 0.0014, 0.002, 0.005, 0.01)
SETS = ('normal', 'adv', 'noisy')
# Key names of the Mahalanobis statistics in the kernel npz (defined TF-free, with them).
stats_key = characteristics.stats_key


def pool_layer(layer):
  """Global average pool of a [B, H, W, C] layer output; a [B, D] one as it is."""
  return tf.reduce_mean(layer, [1, 2]) if layer.shape.ndims == 4 else layer


class LayerModel(object):
  """The restored model's layer outputs, pooled and flat, and per layer Lee et al.'s input
  pre-processing step, built once in the model's graph (before it is finalized).

  The step is Lee et al.'s (lib_generation.py): every pixel moves by exactly eps, up where
  the score's gradient is positive and down elsewhere (their torch.ge(grad, 0) of the
  distance's gradient maps a zero gradient to a step down too), and it is not clipped to the
  image range. Their step of eps divided by the normalization's standard deviation is a step
  of eps in pixel units, which is what the [-0.5, 0.5] input of this network is.
  """

  def __init__(self, model, stats=None):
    """`stats`: {layer: (means [K, D], precision [D, D])} for the pre-processing steps."""
    self.model = model
    with model.graph.as_default():
      self.names = list(model.layers)
      self.pooled = [pool_layer(model.layers[n]) for n in self.names]
      self.flat = [tf.reshape(model.layers[n], [tf.shape(model.layers[n])[0], -1])
                   for n in self.names]
      self.eps = tf1.placeholder(tf.float32, [], name='mahalanobis_eps')
      self.steps = []
      for name, pooled in zip(self.names, self.pooled):
        if stats is None:
          break
        means, precision = (tf.constant(a, tf.float32) for a in stats[name])
        diff = pooled[:, None, :] - means[None]  # [B, K, D]
        score = tf.reduce_max(-0.5 * tf.reduce_sum(
            tf.einsum('bkd,de->bke', diff, precision) * diff, axis=-1), axis=1)
        grad = tf.gradients(tf.reduce_sum(score), model.images)[0]
        direction = tf.where(grad > 0, tf.ones_like(grad), -tf.ones_like(grad))
        self.steps.append(model.images + self.eps * direction)

  def _run(self, fetches, images, batch_size, feed=None):
    out = []
    for start in range(0, len(images), batch_size):
      batch_feed = dict(feed or {})
      batch_feed[self.model.images] = images[start:start + batch_size]
      out.append(self.model.sess.run(fetches, batch_feed))
    return [np.concatenate([o[i] for o in out]) for i in range(len(fetches))]

  def outputs(self, images, pooled, batch_size=100):
    """[N, D_l] per layer: pooled (Mahalanobis) or flattened (LID) outputs of `images`."""
    return self._run(self.pooled if pooled else self.flat, images, batch_size)

  def preprocessed_all(self, images, eps, batch_size=100):
    """Lee et al.'s step of every layer, x +- eps per pixel along grad_x score_layer(x) (not
    clipped), one image set per layer (one forward pass shared by the gradients)."""
    return self._run(self.steps, images, batch_size, {self.eps: eps})

  def pooled_layer(self, layer_index, images, batch_size=100):
    """[N, D] pooled output of one layer (only the part of the network it needs)."""
    return self._run([self.pooled[layer_index]], images, batch_size)[0]


def training_statistics(names, pooled_outputs, labels, num_classes):
  """{stats_key(...): array}: class means and shared precision of every layer, from its
  pooled outputs on the training images (LayerModel.outputs(images, pooled=True))."""
  out = {}
  for name, pooled in zip(names, pooled_outputs):
    means, precision = characteristics.class_statistics(pooled, labels, num_classes)
    out[stats_key('means', name)], out[stats_key('precision', name)] = means, precision
  return out


def stats_from_kernel(kernel, names, kernel_dir, rce):
  """{layer: (means, precision)} from the kernel npz; ResultsError naming kernel_para if not
  there (a kernel of an older version)."""
  missing = [n for n in names if stats_key('means', n) not in kernel]
  if missing:
    raise result_files.ResultsError(
        '%s: kernel_%s.npz holds no Mahalanobis statistics (layers %s): it was made by an older '
        'version; rerun test_adv.py --mode=kernel_para for this model'
        % (kernel_dir, result_files.model_name(rce), ', '.join(missing)))
  return {n: (kernel[stats_key('means', n)], kernel[stats_key('precision', n)]) for n in names}


def mahalanobis_at(layer_model, stats, images, eps, batch_size=100):
  """[N, L] Mahalanobis scores of `images` per layer after Lee et al.'s step of `eps` (0:
  none), each layer's score at its own pre-processed images."""
  out = np.zeros((len(images), len(layer_model.names)))
  plain = None if eps else layer_model.outputs(images, pooled=True, batch_size=batch_size)
  moved = layer_model.preprocessed_all(images, eps, batch_size) if eps else None
  for li, name in enumerate(layer_model.names):
    pooled = plain[li] if not eps else layer_model.pooled_layer(li, moved[li], batch_size)
    out[:, li] = characteristics.mahalanobis_scores(pooled, *stats[name])[0]
  return out


def mahalanobis_all(layer_model, stats, images, batch_size=100):
  """[N, L, E] Mahalanobis scores of `images` per layer and pre-processing eps."""
  return np.stack([mahalanobis_at(layer_model, stats, images, eps, batch_size)
                   for eps in MAHALANOBIS_EPS], axis=2)


def attack_characteristics(layer_model, stats, directory, eps_round, k, lid_batch, seed,
                           batch_size=100):
  """The characteristics arrays of one attack folder, and the facts the summary records."""
  summary = result_files.load_verified_summary(directory)
  index = result_files.round_index(summary, eps_round)
  data = result_files.load_attack_round(directory, index)
  normal = np.load(os.path.join(directory, 'nor_img.npy'), allow_pickle=False)
  adv = np.load(os.path.join(directory, 'adv_img.npy'), allow_pickle=False)[index]
  l2 = attacks.l2_per_example(adv, normal)
  keep = detection.kept_mask(data['labels_true'], data['labels_nor'], data['labels_adv'])
  counted = keep if keep.any() else np.ones_like(keep)  # all, if no attack succeeded
  l0_noise = attack_names.info(summary['attack']).l0_noise
  if l0_noise:
    noisy = characteristics.l0_noisy_copies(normal, adv, seed, attacks.gradient.CLIP_MAX)
  else:  # the successful examples' noisy copies have their mean L2
    noisy = characteristics.noisy_copies(normal, float(np.mean(l2[counted])), seed,
                                         attacks.gradient.CLIP_MIN, attacks.gradient.CLIP_MAX,
                                         match=counted)
  noise_l2 = float(np.mean(attacks.l2_per_example(noisy, normal)[counted]))
  images = {'normal': normal, 'adv': adv, 'noisy': noisy}
  flat = {s: layer_model.outputs(images[s], pooled=False, batch_size=batch_size)
          for s in SETS}
  lid = characteristics.lid_characteristics(flat['normal'], {s: flat[s] for s in SETS[1:]},
                                            k=k, batch_size=lid_batch)
  del flat
  arrays = collections.OrderedDict(
      layers=np.array(layer_model.names), mahalanobis_eps=np.array(MAHALANOBIS_EPS))
  for s in SETS:
    arrays['lid_' + s] = lid[s]
    arrays['mahalanobis_' + s] = mahalanobis_all(layer_model, stats, images[s], batch_size)
  logits, feature = layer_model.model.outputs(noisy, batch_size)
  arrays['noisy_logits'], arrays['noisy_feature'] = logits, feature
  facts = {'eps_round_index': index, 'eps': summary['eps'][index],
           'noise': 'l0' if l0_noise else 'gaussian', 'noise_mean_l2': noise_l2,
           'num_examples': len(normal), 'attack_run_id': result_files.run_id(summary)}
  return arrays, facts
