"""test_adv.py --mode=attack: one restored graph, every attack built once, eps fed per round.

The graph is finalized before the first batch, so nothing can be added to it per round.
Results are collected in numpy and written with result_files (atomically, summary last).
"""
import collections
import time

from absl import logging
import numpy as np
import tensorflow as tf

import attacks
import restored_model

tf1 = tf.compat.v1

EPS_SWEEP = tuple(round(0.02 * i, 2) for i in range(1, 11))

AttackParams = collections.namedtuple('AttackParams', [
    'batch_size', 'nb_iter', 'jsma_max_iter', 'cw_batch_size', 'cw_max_iterations',
    'cw_binary_search_steps', 'cw_learning_rate', 'cw_initial_const', 'seed'])


def eps_schedule(eps):
  """[eps] when a single eps is asked for (> 0), else the paper's sweep 0.02 .. 0.20."""
  return [float(eps)] if eps > 0 else list(EPS_SWEEP)


def random_targets(labels, seed, num_classes):
  """A seeded random class of `num_classes` different from each true label: int [N]."""
  rng = np.random.RandomState(seed)
  offsets = rng.randint(1, num_classes, size=len(labels))
  return (np.asarray(labels) + offsets) % num_classes


class Progress(object):
  """Logs done/total with the rate and the time left, at most every `every` seconds."""

  def __init__(self, what, total, unit='images', every=10.0):
    self.what, self.total, self.unit, self.every = what, total, unit, every
    self.start = self.last = time.time()
    self.done = 0

  def update(self, count):
    self.done += count
    now = time.time()
    if now - self.last >= self.every or self.done >= self.total:
      rate = self.done / max(now - self.start, 1e-9)
      eta = (self.total - self.done) / max(rate, 1e-9)
      logging.info('%s: %d/%d %s, %.1f %s/s, ETA %.0f s', self.what, self.done, self.total,
                   self.unit, rate, self.unit, eta)
      self.last = now


def _one_hot(labels, num_classes):
  return np.eye(num_classes, dtype=np.float32)[np.asarray(labels)]


class EpsAttack(object):
  """A swept attack built once on the restored model (the registry's build); eps is fed."""

  def __init__(self, model, spec, params):
    self.model = model
    with model.graph.as_default():
      self.eps = tf1.placeholder(tf.float32, [], name='eps')
      self.x_adv = spec.build(lambda x: model.model_fn(x)[0], model.images, self.eps, params)
    self.batch_size = params.batch_size

  def run(self, images, eps_list, progress):
    """Adversarial images [R, N, H, W, C] for each eps of `eps_list`."""
    rounds = []
    for eps in eps_list:
      adv = []
      for start in range(0, len(images), self.batch_size):
        batch = images[start:start + self.batch_size]
        adv.append(self.model.sess.run(self.x_adv, {self.model.images: batch, self.eps: eps}))
        progress.update(len(batch))
      rounds.append(np.concatenate(adv))
    return np.stack(rounds)


def _f2_fn(model_fn, kernel):
  """f2(x, y_target) of the white-box attack: -log(1e-30 + KD_t(x)) + log(median_t)."""
  points, labels = kernel['subset_points'], kernel['subset_labels']
  num_classes = len(kernel['subset_medians'])
  per_class = max(int(np.sum(labels == c)) for c in range(num_classes))
  padded = np.zeros((num_classes, per_class, points.shape[1]), np.float32)
  mask = np.zeros((num_classes, per_class), np.float32)
  for c in range(num_classes):
    z = points[labels == c]
    padded[c, :len(z)], mask[c, :len(z)] = z, 1.0
  padded, mask = tf.constant(padded), tf.constant(mask)
  log_median = tf.constant(np.log(kernel['subset_medians']).astype(np.float32))
  sigma2 = float(kernel['sigma2'])

  def f2(x, y_target):
    _, feature = model_fn(x)
    t = tf.argmax(y_target, axis=1)
    z, m = tf.gather(padded, t), tf.gather(mask, t)
    d2 = tf.reduce_sum(tf.square(feature[:, None, :] - z), axis=-1)
    density = tf.reduce_sum(tf.exp(-d2 / sigma2) * m, axis=1) / tf.reduce_sum(m, axis=1)
    return -tf.math.log(1e-30 + density) + tf.gather(log_median, t)

  return f2


class CWAttack(object):
  """C&W (confidence from the registry); with `kernel`, the two-stage white-box C&W-wb."""

  def __init__(self, model, spec, params, kernel=None):
    self.model, self.spec = model, spec
    self.num_classes = model.hps.num_classes
    logits_fn = lambda x: model.model_fn(x)[0]
    common = dict(learning_rate=params.cw_learning_rate,
                  binary_search_steps=params.cw_binary_search_steps,
                  max_iterations=params.cw_max_iterations,
                  initial_const=params.cw_initial_const, num_classes=self.num_classes)
    shape = model.images.shape.as_list()[1:]
    self.cw = attacks.CarliniWagnerL2(model.sess, logits_fn, shape, params.cw_batch_size,
                                      confidence=spec.confidence, **common)
    self.wb = None
    if spec.info.white_box:
      if kernel is None:
        raise ValueError('carliniL2_specific needs the kernel parameters')
      with model.graph.as_default():
        f2 = _f2_fn(model.model_fn, kernel)
        self.wb = attacks.CarliniWagnerL2(model.sess, logits_fn, shape, params.cw_batch_size,
                                          confidence=spec.confidence, extra_loss_fn=f2,
                                          **common)
        self.targets = tf1.placeholder(tf.float32, [None, self.num_classes])
        self.f2 = f2(model.images, self.targets)

  def f2_values(self, images, targets_onehot, batch_size=200):
    out = []
    for s in range(0, len(images), batch_size):
      out.append(self.model.sess.run(self.f2, {self.model.images: images[s:s + batch_size],
                                               self.targets: targets_onehot[s:s + batch_size]}))
    return np.concatenate(out)

  def run(self, images, targets, progress):
    """Adversarial images [1, N, ...] and a dict of attack-specific statistics."""
    onehot = _one_hot(targets, self.num_classes)
    adv = self.cw.attack(images, onehot)
    progress.update(len(images))
    stats = {'target': 'random', 'success_rate': float(np.mean(self.cw.last_success))}
    if self.wb is None:
      return adv[None], stats
    # C&W-wb: examples the first stage already hides from the detector keep that result;
    # the rest get the second attack, whose loss adds c * max(f2, 0).
    f2_first = self.f2_values(adv, onehot)
    hidden = self.cw.last_success & (f2_first <= 0)
    redo = np.flatnonzero(~hidden)
    if redo.size:
      adv2 = self.wb.attack(images[redo], onehot[redo])
      better = self.wb.last_success
      adv[redo[better]] = adv2[better]
    f2_final = self.f2_values(adv, onehot)
    logits, _ = self.model.outputs(adv)
    reached = logits.argmax(axis=1) == targets
    l2 = attacks.l2_per_example(adv, images)
    stats.update({
        'first_stage_success_rate': stats.pop('success_rate'),
        'target_reached_rate': float(np.mean(reached)),
        'ratio_f2_positive': (float(np.mean(f2_final[reached] > 0)) if reached.any()
                              else None),
        'mean_l2_distortion': float(np.mean(l2[reached])) if reached.any() else None,
        'success_rate': float(np.mean(reached & (f2_final <= 0)))})
    return adv[None], stats


def round_stats(labels, pred_nor, pred_adv, conf_adv, nonme_adv, l2, eps):
  return {'eps': eps, 'precision_nor': float(np.mean(pred_nor == labels)),
          'precision_adv': float(np.mean(pred_adv == labels)),
          'mean_confidence_adv': float(np.mean(conf_adv)),
          'mean_non_me_adv': float(np.mean(nonme_adv)), 'mean_l2': float(np.mean(l2))}


def collect(model, images, labels, adv_rounds, eps_list):
  """The original's result arrays and per-round statistics of the adversarial rounds."""
  logits_nor, feat_nor = model.outputs(images)
  pred_nor, conf_nor, nonme_nor = restored_model.prediction_stats(logits_nor)
  arrays = {'labels_true': labels, 'labels_nor': pred_nor, 'confidence_nor': conf_nor,
            'entropy_nor': nonme_nor, 'logits_nor': feat_nor, 'nor_img': images,
            'adv_img': adv_rounds}
  per_round, adv_parts = [], collections.defaultdict(list)
  for eps, adv in zip(eps_list, adv_rounds):
    logits_adv, feat_adv = model.outputs(adv)
    pred_adv, conf_adv, nonme_adv = restored_model.prediction_stats(logits_adv)
    l2 = attacks.l2_per_example(adv, images)
    for name, value in (('labels_adv', pred_adv), ('confidence_adv', conf_adv),
                        ('entropy_adv', nonme_adv), ('logits_adv', feat_adv),
                        ('L2_distance', l2)):
      adv_parts[name].append(value)
    stats = round_stats(labels, pred_nor, pred_adv, conf_adv, nonme_adv, l2, eps)
    per_round.append(stats)
    logging.info('%s: precision nor %.4f adv %.4f, mean confidence %.4f, mean non-ME '
                 '%.4f, mean L2 %.4f', 'one run' if eps is None else 'eps %.3f' % eps,
                 stats['precision_nor'], stats['precision_adv'],
                 stats['mean_confidence_adv'], stats['mean_non_me_adv'], stats['mean_l2'])
  arrays.update({k: np.concatenate(v) for k, v in adv_parts.items()})
  return arrays, per_round
