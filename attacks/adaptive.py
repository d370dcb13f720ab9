"""L-infinity PGD on a classifier and its detector at once, and the session driver that runs it.

Four ways to spend the same PGD budget (Bryniarski et al., "Evading Adversarial Example
Detection Defenses with Orthogonal Projected Gradient Descent", ICLR 2022,
https://arxiv.org/abs/2106.15023):
  oblivious: plain PGD on the classifier; never evaluates the detector; the last iterate.
  lagrangian: PGD on L_cls + lam * max(score - threshold, 0), lam searched per example.
  selective: the classifier gradient until the example is misclassified (as wanted), then the
    detector's.
  orthogonal: the same two phases, each gradient stripped of its component along the other,
    so a step of one phase does not undo the other (before the sign).

`model_fn(x) -> (logits [B, K], feature [B, D])` gives the logits the model predicts with
(already flipped for an RCE model: the attacks never know which it is) and the detector's
feature; `score_fn(logits, feature, classes) -> [B]` is the differentiable detector score,
higher = more suspicious, against `classes` [B] (the predicted class, gradient stopped,
untargeted; the target, targeted). An example is accepted when score <= threshold. Images are
NHWC float32 in [IMAGE_MIN, IMAGE_MAX].

Every loss is one to minimize and every step is x <- x - step * sign(direction), whatever the
method, loss or targeting: Bryniarski et al.'s code flips the detector gradient's sign per case
and gets it right only for some target / loss combinations. Its loop variable also shadows
the step counter; here the counter is `it` and the budget `steps`.

The adaptive methods return, per example, the successful iterate of lowest score over every
iterate (the start and the last included); an example never successful returns its last
iterate.
"""
import collections

import numpy as np
import tensorflow as tf

from rce.tables import attack_names
from rce.tables import perturbation

tf1 = tf.compat.v1

CLIP_MIN = perturbation.IMAGE_MIN
CLIP_MAX = perturbation.IMAGE_MAX
METHODS = ('oblivious', 'lagrangian', 'selective', 'orthogonal')
ADAPTIVE_METHODS = METHODS[1:]
TWO_PHASE_METHODS = ('selective', 'orthogonal')  # the ones with a detector phase and step_det
LOSSES = ('ce', 'cw', 'hc')
# C&W-hc's confidence (10), the high-confidence attack of Athalye et al. that broke LID.
HIGH_CONFIDENCE = attack_names.info('carliniL2_highcon').cw_stages[0].confidence
STEPS = 100  # PGD steps per restart
RESTARTS = 1
# Step sizes as multiples of eps / steps. The classifier phase takes Madry et al.'s
# 2.5 eps / steps, so the walk can cross the ball and still move along its boundary. The
# detector phase starts from a point just across the decision boundary, where a long step
# along the detector gradient undoes the success: it takes eps / steps. Odd restarts halve
# both, so restarts sweep the step too.
CLS_STEP = 2.5
DET_STEP = 1.0
ALTERNATE_SCALE = 0.5
LAGRANGE_STEPS = 5  # rounds of the per-example search over lam
LAM_INIT = 1.0
LAM_FACTOR = 10.0  # lam moves x10 (or /10) until it is bracketed, then bisects geometrically

PGDResult = collections.namedtuple('PGDResult', [
    'x_adv',  # [B, H, W, C] float32, in the eps ball around x and in the image range
    'success',  # [B] bool: x_adv misclassified (untargeted) or classified as the target
    'score',  # [B] float32 detector score of x_adv; None for oblivious
    'success_counts',  # [steps + 1] int32: successful examples at each iterate, start first
])

StepParts = collections.namedtuple('StepParts', [
    'direction',  # [B, H, W, C]: the step is -step * sign(direction)
    'step',  # [B] float32: the step size each example takes
    'success',  # [B] bool: the iterate is successful
    'score',  # [B] detector score of the iterate; None for oblivious
    'grad_cls',  # [B, H, W, C] gradient of L_cls; None unless orthogonal
    'grad_det',  # [B, H, W, C] gradient of the score; None unless orthogonal
])


def _check_choice(value, choices, what):
  if value not in choices:
    raise ValueError('unknown %s %r; expected one of: %s' % (what, value, ', '.join(choices)))


def _as_float(value):
  return tf.cast(tf.convert_to_tensor(value), tf.float32)


def default_step_fractions(steps):
  """The default (cls, det) step fractions of eps per restart: see CLS_STEP and DET_STEP."""
  steps = max(int(steps), 1)
  first = (CLS_STEP / steps, DET_STEP / steps)
  return (first, tuple(ALTERNATE_SCALE * f for f in first))


def is_success(logits, labels, targeted):
  """[B] bool: argmax(logits) != labels (untargeted) or == labels, the targets (targeted)."""
  labels = tf.cast(labels, tf.int32)
  predicted = tf.argmax(logits, axis=1, output_type=tf.int32)
  return tf.equal(predicted, labels) if targeted else tf.not_equal(predicted, labels)


def classifier_loss(logits, labels, loss, targeted):
  """Per-example classifier loss [B] to minimize.

  Args:
    logits: [B, K] the prediction logits.
    labels: [B] int, the true labels (untargeted) or the targets (targeted).
    loss: 'ce' (-CE(true) untargeted, CE(target) targeted), 'cw' (C&W margin, kappa 0) or
      'hc' (the margin with kappa HIGH_CONFIDENCE). kappa only shapes the loss: success
      stays the argmax (is_success).
    targeted: whether labels are targets.
  """
  _check_choice(loss, LOSSES, 'loss')
  labels = tf.cast(labels, tf.int32)
  if loss == 'ce':
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    return ce if targeted else -ce
  kappa = 0.0 if loss == 'cw' else HIGH_CONFIDENCE
  mask = tf.one_hot(labels, tf.shape(logits)[1], on_value=True, off_value=False)
  own = tf.reduce_sum(tf.where(mask, logits, tf.zeros_like(logits)), axis=1)
  # The finite dtype minimum, not -inf, keeps every intermediate finite.
  other = tf.reduce_max(tf.where(mask, tf.fill(tf.shape(logits), logits.dtype.min), logits),
                        axis=1)
  margin = other - own if targeted else own - other
  return tf.maximum(margin, -kappa)


def orthogonal_direction(g, other):
  """g minus its projection on `other`, per example: g - (g.o / o.o) o, for o = other.

  Args:
    g, other: [B, ...] float tensors of one shape (static rank).

  Returns:
    [B, ...]: orthogonal to `other` per example (flattened dot product ~0); g itself where
    `other` is all zero.
  """
  axes = list(range(1, g.shape.ndims))
  dot = tf.reduce_sum(g * other, axes, keepdims=True)
  norm2 = tf.reduce_sum(other * other, axes, keepdims=True)
  return g - tf.math.divide_no_nan(dot, norm2) * other


def _gradient(per_example, x):
  """d/dx of the per-example values [B] (examples independent, so their sum); zero when
  they do not depend on x (a constant detector)."""
  grad = tf.gradients(tf.reduce_sum(per_example), x)[0]
  return tf.zeros_like(x) if grad is None else grad


def _expand(per_example, like):
  """[B] -> [B, 1, ..., 1] broadcasting against `like` [B, ...]."""
  return tf.reshape(per_example, [-1] + [1] * (like.shape.ndims - 1))


def _score(score_fn, logits, feature, labels, targeted):
  """The detector score [B], against the target or the predicted class (gradient stopped)."""
  if targeted:
    classes = tf.cast(labels, tf.int32)
  else:
    classes = tf.stop_gradient(tf.argmax(logits, axis=1, output_type=tf.int32))
  return tf.reshape(score_fn(logits, feature, classes), [-1])


def pgd_direction(model_fn, score_fn, x_t, labels, step_cls, step_det, method, loss,
                  targeted, threshold=None, lam=None):
  """One PGD step's direction and size at the iterate x_t; the step is -step * sign(direction).

  The two-phase methods choose the phase from the iterate's own success: a detector step
  that undoes the success sends the example back to the classifier phase.

  Args:
    model_fn: x -> (logits [B, K], feature [B, D]).
    score_fn: (logits, feature, classes [B] int32) -> score [B]; unused (may be None) for
      oblivious.
    x_t: [B, H, W, C] float32, the iterate.
    labels: [B] int, the true labels (untargeted) or the targets (targeted).
    step_cls, step_det: scalar step sizes (pixel units) of the classifier and detector phases.
    method, loss, targeted: see build_pgd.
    threshold: scalar, the detector threshold (lagrangian only).
    lam: [B] float32, the Lagrange multipliers (lagrangian only).

  Returns:
    StepParts.
  """
  _check_choice(method, METHODS, 'method')
  logits, feature = model_fn(x_t)
  success = is_success(logits, labels, targeted)
  l_cls = classifier_loss(logits, labels, loss, targeted)
  step = tf.fill([tf.shape(x_t)[0]], _as_float(step_cls))
  if method == 'oblivious':
    return StepParts(_gradient(l_cls, x_t), step, success, None, None, None)
  score = _score(score_fn, logits, feature, labels, targeted)
  if method == 'lagrangian':
    mixed = l_cls + lam * tf.maximum(score - threshold, 0.0)
    return StepParts(_gradient(mixed, x_t), step, success, score, None, None)
  step = tf.where(success, _as_float(step_det), step)
  if method == 'selective':
    # Examples are independent, so one backward pass of the per-example choice gives each
    # example the gradient of its phase (benchmarks/adaptive_step.py: half the cost of two).
    phase_loss = tf.where(success, score, l_cls)
    return StepParts(_gradient(phase_loss, x_t), step, success, score, None, None)
  g_c, g_d = _gradient(l_cls, x_t), _gradient(score, x_t)
  cls_dir, det_dir = orthogonal_direction(g_c, g_d), orthogonal_direction(g_d, g_c)
  direction = tf.where(_expand(success, x_t), det_dir, cls_dir)
  return StepParts(direction, step, success, score, g_c, g_d)


def build_pgd(model_fn, score_fn, x, x_init, labels, eps, steps, step_cls, step_det, method,
              loss, targeted, threshold=None, lam=None):
  """The PGD attack graph: `steps` signed steps from x_init in a while_loop(back_prop=False).

  After every step the iterate is projected to the eps L-inf ball around x and clipped to
  [CLIP_MIN, CLIP_MAX]; x_init is projected the same way first.

  Args:
    model_fn: x -> (logits [B, K], feature [B, D]).
    score_fn: (logits, feature, classes [B]) -> [B], higher = more suspicious; None allowed
      for oblivious, which never calls it.
    x: [B, H, W, C] float32 clean images in [CLIP_MIN, CLIP_MAX].
    x_init: [B, H, W, C] float32, the start (x plus the random start, drawn by the caller so
      that it does not depend on the batch).
    labels: [B] int, the true labels (untargeted) or the targets (targeted).
    eps: scalar (number or tensor), the L-inf budget.
    steps: int or scalar int32 tensor, the number of steps.
    step_cls: scalar step (pixel units) while not successful; always for oblivious and
      lagrangian.
    step_det: scalar step once successful (selective and orthogonal).
    method: one of METHODS.
    loss: one of LOSSES (see classifier_loss).
    targeted: whether labels are targets.
    threshold: scalar detector threshold (lagrangian).
    lam: [B] float32 Lagrange multipliers (lagrangian).

  Returns:
    PGDResult. Oblivious: the last iterate. The others: per example the successful iterate of
    lowest score, else the last iterate.
  """
  _check_choice(method, METHODS, 'method')
  _check_choice(loss, LOSSES, 'loss')
  adaptive = method != 'oblivious'
  if adaptive and score_fn is None:
    raise ValueError('method %r needs a score_fn' % method)
  if method == 'lagrangian' and (threshold is None or lam is None):
    raise ValueError('the lagrangian method needs threshold and lam')
  x = _as_float(x)
  eps = _as_float(eps)
  labels = tf.cast(labels, tf.int32)
  steps = tf.cast(tf.convert_to_tensor(steps), tf.int32)
  if threshold is not None:
    threshold = _as_float(threshold)
  if lam is not None:
    lam = _as_float(lam)

  def project(x_t):
    return tf.clip_by_value(tf.clip_by_value(x_t, x - eps, x + eps), CLIP_MIN, CLIP_MAX)

  def keep_best(x_t, success, score, best_x, best_score, found):
    better = success & (score < best_score)
    return (tf.where(_expand(better, x_t), x_t, best_x), tf.where(better, score, best_score),
            found | better)

  def count(success):
    return tf.reduce_sum(tf.cast(success, tf.int32))

  def body(it, x_t, best_x, best_score, found, counts):
    parts = pgd_direction(model_fn, score_fn, x_t, labels, step_cls, step_det, method, loss,
                          targeted, threshold, lam)
    counts = counts.write(it, count(parts.success))
    if adaptive:
      best_x, best_score, found = keep_best(x_t, parts.success, parts.score, best_x,
                                            best_score, found)
    x_next = project(x_t - _expand(parts.step, x_t) * tf.sign(parts.direction))
    return it + 1, x_next, best_x, best_score, found, counts

  start = project(_as_float(x_init))
  batch = tf.shape(x)[0]
  loop_vars = [tf.constant(0), start, start, tf.fill([batch], np.float32(np.inf)),
               tf.zeros([batch], tf.bool), tf.TensorArray(tf.int32, size=steps + 1)]
  _, x_last, best_x, best_score, found, counts = tf1.while_loop(
      lambda it, *_: it < steps, body, loop_vars, back_prop=False, name='pgd_steps')
  logits, feature = model_fn(x_last)
  success = is_success(logits, labels, targeted)
  counts = counts.write(steps, count(success)).stack()
  if not adaptive:
    return PGDResult(tf.stop_gradient(x_last), success, None, counts)
  score = _score(score_fn, logits, feature, labels, targeted)
  best_x, best_score, found = keep_best(x_last, success, score, best_x, best_score, found)
  x_adv = tf.where(_expand(found, x_last), best_x, x_last)
  score = tf.where(found, best_score, score)
  return PGDResult(tf.stop_gradient(x_adv), found, tf.stop_gradient(score), counts)


def update_lambda(lam, lower, upper, succeeded, accepted):
  """One round of the per-example search over the Lagrange multiplier (pure numpy).

  Successful but rejected (score > threshold): lam is too small, it becomes the lower bound.
  Unsuccessful: lam is too large, it becomes the upper bound. Then lam moves x LAM_FACTOR (or
  / LAM_FACTOR) while the other bound is unknown (lower 0, upper inf), else to the geometric
  mean of the bounds. Successful and accepted: done, lam and its bounds stay.

  Args:
    lam, lower, upper: [N] float arrays; start with lam_init, 0 and inf.
    succeeded, accepted: [N] bool arrays, of the round's result.

  Returns:
    (lam, lower, upper), new float64 arrays.
  """
  lam = np.array(lam, np.float64)
  lower = np.array(lower, np.float64)
  upper = np.array(upper, np.float64)
  succeeded = np.asarray(succeeded, bool)
  accepted = np.asarray(accepted, bool)
  too_small = succeeded & ~accepted
  too_large = ~succeeded
  lower = np.where(too_small, np.maximum(lower, lam), lower)
  upper = np.where(too_large, np.minimum(upper, lam), upper)
  bracketed = (lower > 0) & np.isfinite(upper)
  middle = np.sqrt(lower * np.where(np.isfinite(upper), upper, 1.0))
  moved = np.where(bracketed, middle,
                   np.where(too_small, lam * LAM_FACTOR, lam / LAM_FACTOR))
  lam = np.where(too_small | too_large, moved, lam)
  return lam, lower, upper


def _keep_better(best, new):
  """Per example: the new result where it succeeds with a lower score (or the kept one does
  not succeed), or where neither succeeds (the latest run is kept); dicts of [N] arrays."""
  if best is None:
    return {k: v.copy() for k, v in new.items()}
  replace = new['success'] & (~best['success'] | (new['score'] < best['score']))
  replace |= ~new['success'] & ~best['success']
  return {k: np.where(_expand_np(replace, v), v, best[k]) for k, v in new.items()}


def _expand_np(mask, like):
  return mask.reshape((-1,) + (1,) * (np.ndim(like) - 1))


class AdaptivePGD(object):
  """PGD against a classifier and detector; the graph built once, restarts and the lam search
  in numpy.

  Build it on the model's graph before the caller finalizes it; `attack` adds no op.
  """

  def __init__(self, model_fn, score_fn, image_shape, method, loss='ce', targeted=False,
               graph=None):
    """Builds the attack graph (placeholders and one while_loop).

    Args:
      model_fn: x -> (logits [B, K], feature [B, D]), prediction logits (RCE already flipped).
      score_fn: (logits, feature, classes [B] int32) -> [B] detector score, higher = more
        suspicious; may be None for oblivious (then info['score'] is None).
      image_shape: (H, W, C).
      method: one of METHODS.
      loss: one of LOSSES.
      targeted: labels given to `attack` are targets.
      graph: the graph to build in; default the default graph.
    """
    _check_choice(method, METHODS, 'method')
    _check_choice(loss, LOSSES, 'loss')
    if method != 'oblivious' and score_fn is None:
      raise ValueError('method %r needs a score_fn' % method)
    self.method, self.loss, self.targeted = method, loss, bool(targeted)
    self.image_shape = tuple(int(d) for d in image_shape)
    self._score = None
    graph = graph or tf1.get_default_graph()
    shape = [None] + list(self.image_shape)
    with graph.as_default(), tf1.name_scope('adaptive_pgd'):
      self._images = tf1.placeholder(tf.float32, shape, name='images')
      self._labels = tf1.placeholder(tf.int32, [None], name='labels')
      self._x_init = tf1.placeholder(tf.float32, shape, name='x_init')
      self._eps = tf1.placeholder(tf.float32, [], name='eps')
      self._steps = tf1.placeholder(tf.int32, [], name='steps')
      self._step_cls = tf1.placeholder(tf.float32, [], name='step_cls')
      self._step_det = tf1.placeholder(tf.float32, [], name='step_det')
      self._threshold = self._lam = None
      if method == 'lagrangian':
        self._threshold = tf1.placeholder(tf.float32, [], name='threshold')
        self._lam = tf1.placeholder(tf.float32, [None], name='lam')
      self._result = build_pgd(model_fn, score_fn, self._images, self._x_init, self._labels,
                               self._eps, self._steps, self._step_cls, self._step_det, method,
                               loss, self.targeted, self._threshold, self._lam)
      if method == 'oblivious' and score_fn is not None:
        # Reported only, after the attack chose its result without it.
        logits, feature = model_fn(self._images)
        self._score = _score(score_fn, logits, feature, self._labels, self.targeted)

  def _run(self, sess, images, labels, x_init, lam, scalars, index, batch_size):
    """The PGD result of examples `index`, batch_size at a time; dict of numpy arrays."""
    fetch = {'x': self._result.x_adv, 'success': self._result.success}
    if self._result.score is not None:
      fetch['score'] = self._result.score
    parts = collections.defaultdict(list)
    for start in range(0, len(index), batch_size):
      rows = index[start:start + batch_size]
      feed = dict(scalars)
      feed.update({self._images: images[rows], self._labels: labels[rows],
                   self._x_init: x_init[rows]})
      if self._lam is not None:
        feed[self._lam] = lam[rows].astype(np.float32)
      for key, value in sess.run(fetch, feed).items():
        parts[key].append(value)
    return {k: np.concatenate(v) for k, v in parts.items()}

  def attack(self, sess, images, labels, eps, restarts=RESTARTS, steps=STEPS,
             step_fractions=None, seed=0, threshold=None, batch_size=100,
             lagrange_steps=LAGRANGE_STEPS, lam_init=LAM_INIT):
    """Runs the attack with random restarts on any number of examples.

    Restart r starts from images + eps * U[-1, 1], drawn from RandomState([seed, r]) over the
    whole image set (the same starts at any batch size), with the step fractions
    step_fractions[r % len(step_fractions)]. Adaptive methods keep per example the successful
    result of lowest score over the restarts; oblivious keeps the first restart whose last
    iterate succeeds (later restarts skip it), else the last restart's. Lagrangian searches lam
    per example inside each restart (`lagrange_steps` rounds from the same start, lam_init
    first, `update_lambda` between rounds) and keeps the best round.

    Args:
      sess: a session on the graph the attack was built in.
      images: [N, H, W, C] float32 in [CLIP_MIN, CLIP_MAX].
      labels: [N] int, true labels (untargeted) or targets (targeted).
      eps: the L-inf budget; 0 returns the images (one evaluation: info records steps 0
        and restarts 1).
      restarts: random starts.
      steps: PGD steps per run.
      step_fractions: sequence of (cls, det) step sizes as fractions of eps, cycled over the
        restarts; default default_step_fractions(steps).
      seed: seed of the random starts.
      threshold: detector threshold (accepted = score <= threshold); required by lagrangian.
      batch_size: examples per sess.run.
      lagrange_steps: rounds of the lam search per restart (lagrangian).
      lam_init: the first lam (lagrangian).

    Returns:
      (x_adv [N, H, W, C] float32, info). info holds the settings ('method', 'loss',
      'targeted', 'eps', 'steps', 'restarts', 'step_fractions', 'lagrange_steps' (0 unless
      lagrangian), 'lam_init' (None unless lagrangian), 'seed', 'threshold') and per
      example, of the kept result:
      'success' [N] bool, 'score' [N] float32 (None if there is no score_fn), 'accepted' and
      'evaded' (= success & accepted) [N] bool (None without threshold), 'restart' [N] int
      (the restart it came from) and 'lam' [N] (its lam; None unless lagrangian).
    """
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int32)
    if images.shape[1:] != self.image_shape:
      raise ValueError('images of shape %s, the attack was built for %s'
                       % (images.shape[1:], self.image_shape))
    if len(images) != len(labels):
      raise ValueError('%d images but %d labels' % (len(images), len(labels)))
    lagrangian = self.method == 'lagrangian'
    if lagrangian and threshold is None:
      raise ValueError('the lagrangian method needs a threshold')
    eps = float(eps)
    steps, restarts = int(steps), int(restarts)
    if step_fractions is None:
      step_fractions = default_step_fractions(steps)
    step_fractions = tuple((float(c), float(d)) for c, d in step_fractions)
    rounds = int(lagrange_steps) if lagrangian else 1
    if eps == 0:
      # Every iterate is the image itself: one evaluation, no step.
      steps, restarts, rounds = 0, 1, 1
    n = len(images)
    index = np.arange(n)
    best = None
    for r in range(restarts):
      rng = np.random.RandomState([int(seed), r])
      noise = rng.uniform(-1.0, 1.0, images.shape).astype(np.float32)
      x_init = images + np.float32(eps) * noise
      cls_fraction, det_fraction = step_fractions[r % len(step_fractions)]
      scalars = {self._eps: eps, self._steps: steps, self._step_cls: eps * cls_fraction,
                 self._step_det: eps * det_fraction}
      if lagrangian:
        scalars[self._threshold] = float(threshold)
      if self.method == 'oblivious':
        todo = index if best is None else index[~best['success']]
        if not len(todo):
          break
        out = self._run(sess, images, labels, x_init, None, scalars, todo, batch_size)
        out['restart'] = np.full(len(todo), r)
        if best is None:
          best = out
        else:
          for key, value in out.items():
            best[key][todo] = value
        continue
      lam = np.full(n, float(lam_init))
      lower, upper = np.zeros(n), np.full(n, np.inf)
      for _ in range(rounds):
        out = self._run(sess, images, labels, x_init, lam, scalars, index, batch_size)
        out['restart'] = np.full(n, r)
        if lagrangian:
          out['lam'] = lam.copy()
        best = _keep_better(best, out)
        if lagrangian:
          lam, lower, upper = update_lambda(lam, lower, upper, out['success'],
                                            out['score'] <= threshold)
    x_adv = images.copy() if eps == 0 else best['x']
    score = best.get('score')
    if score is None and self._score is not None:
      score = np.concatenate([
          sess.run(self._score, {self._images: x_adv[i:i + batch_size],
                                 self._labels: labels[i:i + batch_size]})
          for i in range(0, n, batch_size)])
    accepted = None if threshold is None or score is None else score <= threshold
    info = {
        'method': self.method, 'loss': self.loss, 'targeted': self.targeted, 'eps': eps,
        'steps': steps, 'restarts': restarts, 'step_fractions': step_fractions,
        'lagrange_steps': rounds if lagrangian else 0,
        'lam_init': float(lam_init) if lagrangian else None,
        'seed': int(seed), 'threshold': threshold,
        'success': best['success'].astype(bool),
        'score': None if score is None else np.asarray(score, np.float32),
        'accepted': accepted,
        'evaded': None if accepted is None else best['success'] & accepted,
        'restart': best['restart'], 'lam': best.get('lam'),
    }
    return x_adv.astype(np.float32), info
