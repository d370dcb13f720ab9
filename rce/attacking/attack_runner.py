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
from rce.detection import detection
from rce.tables import attack_names

tf1 = tf.compat.v1

# The attacks' parameters from the flags: `cw_overrides` maps each of attacks.CW_SETTINGS to
# the value given on the command line, or None (the attack's own default).
# `adaptive`: the adaptive_runner.AdaptiveParams of Table 6's PGD attacks (None: defaults).
AttackParams = collections.namedtuple('AttackParams', [
    'batch_size', 'nb_iter', 'jsma_max_iter', 'tgsm_target', 'cw_overrides', 'seed',
    'adaptive'], defaults=(None,))


def cw_batch_sizes(num_images, given, gpus):
  """The C&W batch sizes to try, in order: [given] when --cw_batch_size was given, [None]
  (the attack's own) on a CPU; on a GPU all attacked images in one batch first, since C&W's
  cost there is its iterations, not its images, then halved on each out-of-memory error down
  to 1. Results do not depend on the batch (abort early is per example)."""
  if given is not None or not gpus:
    return [given]
  sizes, size = [], max(1, int(num_images))
  while size > 1:
    sizes.append(size)
    size = (size + 1) // 2
  return sizes + [1]


def with_batch_fallback(attempt, sizes):
  """attempt(size) for the first size of `sizes` that fits in device memory.

  A tf.errors.ResourceExhaustedError moves on to the next size with a warning; the last
  size's error is raised.
  """
  for i, size in enumerate(sizes):
    try:
      return attempt(size)
    except tf.errors.ResourceExhaustedError as e:
      if i + 1 == len(sizes):
        raise
      logging.warning('C&W at batch %s ran out of device memory (%s); retrying at batch %d '
                      '(the results do not depend on the batch)', size,
                      str(e.message).splitlines()[0][:200], sizes[i + 1])
  raise ValueError('no batch size to try')


random_targets = attack_names.random_targets


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


def cw_settings(spec, overrides):
  """The CWStage of each C&W run of `spec`: the registry's (the original's), with every
  setting given on the command line (`overrides`: {setting: value or None}) winning."""
  given = {k: v for k, v in overrides.items() if v is not None}
  stages = [stage._replace(**given) for stage in spec.info.cw_stages]
  for i, stage in enumerate(stages, start=1):
    logging.info('%s, C&W run %d of %d: batch %d, %d iterations x %d binary-search steps, '
                 'initial c %g, confidence %g, learning rate %g (%s)', spec.info.name, i,
                 len(stages), stage.batch_size, stage.max_iterations,
                 stage.binary_search_steps, stage.initial_const, stage.confidence,
                 stage.learning_rate,
                 'from the command line: %s' % ', '.join('--cw_%s' % k for k in sorted(given))
                 if given else "the attack's defaults, the original's")
  return stages


def wb_stats(images, adv, clean_correct, reached, f2):
  """Table 3 of the paper for C&W-wb, over the examples that count.

  Args:
    images, adv: [N, H, W, C] clean and adversarial images.
    clean_correct: bool [N], the clean image is classified correctly.
    reached: bool [N], the adversarial image is classified as its target.
    f2: [N] the detector term f2(x*) of the adversarial images (> 0: K-density flags it).

  Returns:
    dict: 'table3_examples' (clean-correct and target reached: the examples Table 3 is
    over), 'ratio_f2_positive' (the fraction of them with f2(x*) > 0), 'rms_distortion'
    (the paper's distortion: mean over them of sqrt(mean((x - x*)^2))), 'mean_l2_distortion'
    (mean L2 norm over them); None where no example counts.
  """
  counted = clean_correct & reached
  l2 = attacks.l2_per_example(np.asarray(adv, np.float64), np.asarray(images, np.float64))
  rms = l2 / np.sqrt(np.prod(np.shape(images)[1:]))  # sqrt(mean(...)) = L2 / sqrt(size)
  if not counted.any():
    return {'table3_examples': 0, 'ratio_f2_positive': None, 'rms_distortion': None,
            'mean_l2_distortion': None}
  return {'table3_examples': int(counted.sum()),
          'ratio_f2_positive': float(np.mean(f2[counted] > 0)),
          'rms_distortion': float(np.mean(rms[counted])),
          'mean_l2_distortion': float(np.mean(l2[counted]))}


class CWAttack(object):
  """C&W with the attack's settings (registry defaults, flags override); with `kernel`, the
  two-stage white-box C&W-wb: an ordinary C&W, then from its image the C&W whose loss adds
  c * max(f2, 0), on every example, as the original."""

  def __init__(self, model, spec, params, kernel=None):
    self.model, self.spec = model, spec
    self.num_classes = model.hps.num_classes
    self.stages = cw_settings(spec, params.cw_overrides)
    logits_fn = lambda x: model.model_fn(x)[0]
    shape = model.images.shape.as_list()[1:]

    def build(stage, extra_loss_fn=None):
      return attacks.CarliniWagnerL2(
          model.sess, logits_fn, shape, stage.batch_size, confidence=stage.confidence,
          learning_rate=stage.learning_rate, binary_search_steps=stage.binary_search_steps,
          max_iterations=stage.max_iterations, initial_const=stage.initial_const,
          extra_loss_fn=extra_loss_fn, num_classes=self.num_classes)

    self.cw = build(self.stages[0])
    self.wb = None
    if spec.info.white_box:
      if kernel is None:
        raise ValueError('%s needs the kernel parameters' % spec.info.name)
      with model.graph.as_default():
        f2 = _f2_fn(model.model_fn, kernel)
        self.wb = build(self.stages[1], f2)
        self.targets = tf1.placeholder(tf.float32, [None, self.num_classes])
        self.f2 = f2(model.images, self.targets)

  def f2_values(self, images, targets_onehot, batch_size=200):
    out = []
    for s in range(0, len(images), batch_size):
      out.append(self.model.sess.run(self.f2, {self.model.images: images[s:s + batch_size],
                                               self.targets: targets_onehot[s:s + batch_size]}))
    return np.concatenate(out)

  def run(self, images, labels, targets, progress):
    """Adversarial images [1, N, ...] and a dict of attack-specific statistics.

    Args:
      images: [N, H, W, C] clean images; labels: [N] true labels; targets: [N] target classes.
      progress: a Progress, told of the images done.
    """
    onehot = _one_hot(targets, self.num_classes)
    adv = self.cw.attack(images, onehot)
    stats = {'target': 'random', 'cw_settings': [s._asdict() for s in self.stages],
             'success_rate': float(np.mean(self.cw.last_success))}
    if self.wb is None:
      progress.update(len(images))
      return adv[None], stats
    # C&W-wb's second run starts from the first run's image (unchanged where that failed),
    # its L2 penalty measured from it, on every example.
    adv = self.wb.attack(adv, onehot)
    progress.update(len(images))
    logits, _ = self.model.outputs(adv)
    clean_logits, _ = self.model.outputs(images)
    stats.update(wb_stats(images, adv, clean_logits.argmax(axis=1) == labels,
                          logits.argmax(axis=1) == targets, self.f2_values(adv, onehot)))
    stats.update({
        'first_stage_success_rate': stats.pop('success_rate'),
        'success_rate': float(np.mean(self.wb.last_success)),
        'fallback_rate': float(np.mean(self.wb.last_fallback)),
        'target_reached_rate': float(np.mean(logits.argmax(axis=1) == targets))})
    return adv[None], stats


def round_stats(labels, pred_nor, pred_adv, conf_adv, nonme_adv, l2, eps):
  return {'eps': eps, 'precision_nor': float(np.mean(pred_nor == labels)),
          'precision_adv': float(np.mean(pred_adv == labels)),
          'mean_confidence_adv': float(np.mean(conf_adv)),
          'mean_non_me_adv': float(np.mean(nonme_adv)), 'mean_l2': float(np.mean(l2))}


def collect(model, images, labels, adv_rounds, eps_list):
  """The original's result arrays and per-round statistics of the adversarial rounds."""
  logits_nor, feat_nor = model.outputs(images)
  pred_nor, conf_nor, nonme_nor = detection.prediction_stats(logits_nor)
  arrays = {'labels_true': labels, 'labels_nor': pred_nor, 'confidence_nor': conf_nor,
            'entropy_nor': nonme_nor, 'logits_nor': feat_nor, 'nor_img': images,
            'adv_img': adv_rounds}
  per_round, adv_parts = [], collections.defaultdict(list)
  for eps, adv in zip(eps_list, adv_rounds):
    logits_adv, feat_adv = model.outputs(adv)
    pred_adv, conf_adv, nonme_adv = detection.prediction_stats(logits_adv)
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
