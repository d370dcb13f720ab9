"""Carlini-Wagner L2 attack (https://arxiv.org/abs/1608.04644), after carlini/nn_robust_attacks.

One class covers the paper's three variants through constructor arguments: `carliniL2`
(confidence 0), `carliniL2_highcon` (confidence 10) and both stages of `carliniL2_specific`
(confidence 5, then a second attack with the detector term `extra_loss_fn`).

As in Carlini's l2_attack: tanh box, Adam, per-example binary search over the constant c
(x10 until the first success, then bisection), abort early when the loss stops falling, and
examples never successful are returned unchanged. Unlike it, all Adam iterations of one
binary-search step run inside one `tf.while_loop` (one `sess.run` per step), which also tracks
each example's smallest successful L2 and its image; the binary search stays in numpy.

Abort early is per example: an example freezes (its image stops moving and is no longer
tracked) when its own loss has not fallen by 0.01 % since the last check. Carlini's code, and
the paper's, stop the whole batch on the summed loss, so their results depend on which images
share a batch; per example, every result equals the batch-1 result (the paper's C&W-wb ran
at batch 1) whatever the batch size.

With the detector term (`extra_loss_fn`, C&W-wb's second stage) the attack also keeps the
original's fallback: an example that never succeeds returns the image of lowest f2 among
those that reach the target, when there is one.
"""
import numpy as np
import tensorflow as tf

from attacks.distance import l2_per_example
from rce.tables import perturbation

tf1 = tf.compat.v1

# Defaults of the class (each attack's own settings, the original's, are in attack_names;
# Carlini's own initial constant is 1e-3, the paper's code used 1.0).
CONFIDENCE = 0.0  # the target logit just has to be the largest
LEARNING_RATE = 0.01  # Adam step size
BINARY_SEARCH_STEPS = 9  # binary-search steps over c
MAX_ITERATIONS = 10000  # Adam iterations per binary-search step
ABORT_EARLY = True  # stop a step when the loss has not fallen over max_iterations // 10
INITIAL_CONST = 1.0  # first c
# Adam as tf.compat.v1.train.AdamOptimizer's defaults (Carlini used that optimizer).
ADAM_BETA1 = 0.9
ADAM_BETA2 = 0.999
ADAM_EPSILON = 1e-8
_TANH_SHRINK = 0.999999  # keeps arctanh finite on pixels at the box edges
_NO_L2 = 1e10  # Carlini's "no success yet" sentinel for the squared L2


class CarliniWagnerL2(object):
  """Carlini-Wagner L2 attack on a logits function; graph built once in the constructor.

  Attributes set by `attack`:
    last_success: bool [N], whether each example was ever successful.
    last_fallback: bool [N], unsuccessful examples returned as their lowest-f2 image that
      reaches the target (only with the detector term).
    last_l2: float32 [N], L2 norm ||x_adv - x||_2 of the returned example, np.inf where
      unsuccessful.
    last_iterations: Adam iterations run in all, over chunks and binary-search steps (abort
      early makes it smaller than chunks * binary_search_steps * max_iterations).
  """

  def __init__(self, sess, logits_fn, image_shape, batch_size, confidence=CONFIDENCE,
               learning_rate=LEARNING_RATE, binary_search_steps=BINARY_SEARCH_STEPS,
               max_iterations=MAX_ITERATIONS, abort_early=ABORT_EARLY,
               initial_const=INITIAL_CONST, targeted=True, clip_min=perturbation.IMAGE_MIN,
               clip_max=perturbation.IMAGE_MAX,
               extra_loss_fn=None, num_classes=None):
    """Builds the attack graph in the session's graph.

    Args:
      sess: tf.compat.v1.Session whose graph holds the model (its variables are the
        caller's to initialize or restore; the attack's own are local variables, so a
        default Saver neither saves nor expects them).
      logits_fn: x [B, H, W, C] -> logits [B, K] (already flipped for an RCE model).
      image_shape: (H, W, C).
      batch_size: examples per graph run; `attack` pads the last chunk.
      confidence: kappa, the logit margin the target must win by.
      learning_rate: Adam step size.
      binary_search_steps: steps of the search over c.
      max_iterations: Adam iterations per binary-search step.
      abort_early: stop a step when the loss did not fall by 0.01% over max_iterations // 10.
      initial_const: the first c.
      targeted: y_target is the class to reach (True) or the true class to leave (False).
      clip_min, clip_max: the box, [-0.5, 0.5] for this suite.
      extra_loss_fn: optional f2(x_new [B,H,W,C], y_target [B,K]) -> [B]; the loss adds
        c * max(f2, 0) and success also needs f2 <= 0 (the white-box attack on the detector).
      num_classes: K, the width of the logits and of y_target (required).
    """
    if num_classes is None:
      raise ValueError('CarliniWagnerL2 needs num_classes, the width of the logits')
    self.sess = sess
    self.image_shape = tuple(int(d) for d in image_shape)
    self.batch_size = int(batch_size)
    self.confidence = float(confidence)
    self.learning_rate = float(learning_rate)
    self.binary_search_steps = int(binary_search_steps)
    self.max_iterations = int(max_iterations)
    self.abort_early = bool(abort_early)
    self.initial_const = float(initial_const)
    self.targeted = bool(targeted)
    self.num_classes = int(num_classes)
    self.clip_min, self.clip_max = float(clip_min), float(clip_max)
    # Carlini's last step retries with the upper bound when the search is long enough.
    self.repeat = self.binary_search_steps >= 10
    self.last_success = None
    self.last_fallback = None
    self.last_l2 = None
    self.last_iterations = None
    # A name scope only: a variable scope would make logits_fn create a second model.
    with sess.graph.as_default(), tf1.name_scope('carlini_l2'):
      self._build(logits_fn, extra_loss_fn)
    sess.run(self._init)

  def _build(self, logits_fn, extra_loss_fn):
    shape = (self.batch_size,) + self.image_shape
    axes = list(range(1, len(shape)))

    def local(name, var_shape):
      return tf1.Variable(tf.zeros(var_shape, tf.float32), name=name, trainable=False,
                          collections=[tf1.GraphKeys.LOCAL_VARIABLES])

    timg = local('timg', shape)  # arctanh-space images
    num_classes = self.num_classes
    tlab = local('tlab', (self.batch_size, num_classes))
    const = local('const', (self.batch_size,))
    modifier = local('modifier', shape)
    adam_m = local('adam_m', shape)
    adam_v = local('adam_v', shape)
    own = [timg, tlab, const, modifier, adam_m, adam_v]
    self._init = tf1.variables_initializer(own)

    self._timg_ph = tf1.placeholder(tf.float32, shape, name='timg_in')
    self._tlab_ph = tf1.placeholder(tf.float32, (self.batch_size, num_classes), name='tlab_in')
    self._const_ph = tf1.placeholder(tf.float32, (self.batch_size,), name='const_in')
    self._setup = tf.group(tf1.assign(timg, self._timg_ph), tf1.assign(tlab, self._tlab_ph))
    # The reset of one binary-search step: fresh modifier and Adam slots, the step's c.
    reset = tf.group(tf1.assign(modifier, tf.zeros(shape)), tf1.assign(adam_m, tf.zeros(shape)),
                     tf1.assign(adam_v, tf.zeros(shape)), tf1.assign(const, self._const_ph))

    boxmul = (self.clip_max - self.clip_min) / 2.0
    boxplus = (self.clip_min + self.clip_max) / 2.0
    conf, targeted = self.confidence, self.targeted
    lr = self.learning_rate
    b1, b2 = ADAM_BETA1, ADAM_BETA2
    check_every = max(1, self.max_iterations // 10)
    abort_early = self.abort_early

    def evaluate(mod, timg_v, tlab_v, const_v):
      """Per-example loss, squared L2, success, target reached and f2 of tanh(mod + timg)."""
      new_img = tf.tanh(mod + timg_v) * boxmul + boxplus
      orig = tf.tanh(timg_v) * boxmul + boxplus
      output = logits_fn(new_img)
      l2 = tf.reduce_sum(tf.square(new_img - orig), axes)
      real = tf.reduce_sum(tlab_v * output, 1)
      other = tf.reduce_max((1 - tlab_v) * output - tlab_v * 10000, 1)
      if targeted:
        loss1 = tf.maximum(0.0, other - real + conf)
        success = tf.equal(tf.argmax(output - conf * tlab_v, 1), tf.argmax(tlab_v, 1))
      else:
        loss1 = tf.maximum(0.0, real - other + conf)
        success = tf.not_equal(tf.argmax(output + conf * tlab_v, 1), tf.argmax(tlab_v, 1))
      reached = success  # judged on the logits, with the confidence margin
      f2 = tf.zeros_like(l2)
      if extra_loss_fn is not None:
        f2 = tf.reshape(extra_loss_fn(new_img, tlab_v), [-1])
        loss1 += tf.maximum(f2, 0.0)
        success = success & (f2 <= 0.0)
      return new_img, l2, l2 + const_v * loss1, success, reached, f2

    def expand(mask):
      return tf.reshape(mask, [-1] + [1] * len(axes))

    def cond(i, mod, m, v, prev, stopped, best_l2, best_img, fb_f2, fb_img):
      return tf.logical_not(tf.reduce_all(stopped)) & (i < self.max_iterations)

    def body(i, mod, m, v, prev, stopped, best_l2, best_img, fb_f2, fb_img):
      timg_v, tlab_v, const_v = timg.read_value(), tlab.read_value(), const.read_value()
      new_img, l2, loss, success, reached, f2 = evaluate(mod, timg_v, tlab_v, const_v)
      grad = tf.gradients(tf.reduce_sum(loss), mod)[0]  # example i's gradient is its own
      # Carlini: every max_iterations // 10 iterations, stop when the (pre-update) loss did
      # not fall by 0.01% since the last check; that iteration's images are not tracked.
      # Here per example: it freezes, the others go on.
      check = tf.logical_and(abort_early, tf.equal(i % check_every, 0))
      stopped = stopped | (check & (loss > prev * 0.9999))
      prev = tf.where(check, loss, prev)
      active = tf.logical_not(stopped)
      better = success & (l2 < best_l2) & active
      best_l2 = tf.where(better, l2, best_l2)
      best_img = tf.where(expand(better), new_img, best_img)
      fallback = reached & (f2 < fb_f2) & active
      fb_f2 = tf.where(fallback, f2, fb_f2)
      fb_img = tf.where(expand(fallback), new_img, fb_img)
      # Adam, as tf.compat.v1.train.AdamOptimizer; frozen examples keep their image.
      t = tf.cast(i + 1, tf.float32)
      m = b1 * m + (1 - b1) * grad
      v = b2 * v + (1 - b2) * tf.square(grad)
      lr_t = lr * tf.sqrt(1 - tf.pow(b2, t)) / (1 - tf.pow(b1, t))
      mod = tf.where(expand(active), mod - lr_t * m / (tf.sqrt(v) + ADAM_EPSILON), mod)
      return i + 1, mod, m, v, prev, stopped, best_l2, best_img, fb_f2, fb_img

    with tf.control_dependencies([reset]):
      start = [tf.constant(0), modifier.read_value(), adam_m.read_value(),
               adam_v.read_value(), tf.fill([self.batch_size], np.inf),
               tf.zeros([self.batch_size], tf.bool), tf.fill([self.batch_size], _NO_L2),
               tf.zeros(shape), tf.fill([self.batch_size], np.inf), tf.zeros(shape)]
    out = tf1.while_loop(cond, body, start, back_prop=False, name='adam_steps')
    _, mod, m, v, _, _, best_l2, best_img, fb_f2, fb_img = out
    keep_state = tf.group(tf1.assign(modifier, mod), tf1.assign(adam_m, m),
                          tf1.assign(adam_v, v))
    with tf.control_dependencies([keep_state]):
      self._step = [tf.identity(t) for t in (best_l2, best_img, fb_f2, fb_img)]
    self._iterations = out[0]
    self._fallback = extra_loss_fn is not None

  def attack(self, x, y_target):
    """Runs the attack on any number of examples, batch_size at a time.

    Args:
      x: float32 [N, H, W, C] images in [clip_min, clip_max].
      y_target: one-hot [N, K]: the targets (targeted) or true labels (untargeted).

    Returns:
      float32 [N, H, W, C] adversarial images in [clip_min, clip_max]; unsuccessful examples
      are returned unchanged (with the detector term: the fallback image, when one reached
      the target). Sets `last_success`, `last_fallback` and `last_l2`.
    """
    x = np.asarray(x, np.float32)
    y_target = np.asarray(y_target, np.float32)
    if x.shape[1:] != self.image_shape:
      raise ValueError('images of shape %s, the attack was built for %s'
                       % (x.shape[1:], self.image_shape))
    if len(x) != len(y_target):
      raise ValueError('%d images but %d targets' % (len(x), len(y_target)))
    n = len(x)
    self.last_iterations = 0
    adv = x.copy()
    success = np.zeros(n, bool)
    fallback = np.zeros(n, bool)
    for start in range(0, n, self.batch_size):
      stop = min(n, start + self.batch_size)
      pad = self.batch_size - (stop - start)
      xb = np.concatenate([x[start:stop], np.repeat(x[stop - 1:stop], pad, 0)])
      yb = np.concatenate([y_target[start:stop], np.repeat(y_target[stop - 1:stop], pad, 0)])
      best_img, found, fb_img, fb_found = self._attack_batch(xb, yb)
      k = stop - start
      use_fb = fb_found[:k] & ~found[:k]
      adv[start:stop][found[:k]] = best_img[:k][found[:k]]
      adv[start:stop][use_fb] = fb_img[:k][use_fb]
      success[start:stop] = found[:k]
      fallback[start:stop] = use_fb
    adv = np.clip(adv, self.clip_min, self.clip_max)
    l2 = l2_per_example(adv, x)
    self.last_success, self.last_fallback = success, fallback
    self.last_l2 = np.where(success, l2, np.inf).astype(np.float32)
    return adv

  def _attack_batch(self, images, labels):
    """Carlini's binary search over c for one full batch.

    Returns:
      (best images, success, fallback images, fallback found): the smallest-L2 successful
      image of each example, and (detector term only) its lowest-f2 image reaching the target.
    """
    boxmul = (self.clip_max - self.clip_min) / 2.0
    boxplus = (self.clip_min + self.clip_max) / 2.0
    timg = np.arctanh((images - boxplus) / boxmul * _TANH_SHRINK)
    self.sess.run(self._setup, {self._timg_ph: timg, self._tlab_ph: labels})
    b = self.batch_size
    lower = np.zeros(b)
    upper = np.full(b, 1e10)
    const = np.full(b, self.initial_const)
    o_best_l2 = np.full(b, _NO_L2)
    o_best_img = images.copy()
    o_fb_f2 = np.full(b, np.inf)
    o_fb_img = images.copy()
    for outer in range(self.binary_search_steps):
      if self.repeat and outer == self.binary_search_steps - 1:
        const = upper
      (step_l2, step_img, fb_f2, fb_img), iterations = self.sess.run(
          [self._step, self._iterations], {self._const_ph: const.astype(np.float32)})
      self.last_iterations += int(iterations)
      fb_better = fb_f2 < o_fb_f2
      o_fb_f2[fb_better] = fb_f2[fb_better]
      o_fb_img[fb_better] = fb_img[fb_better]
      ok = step_l2 < _NO_L2  # some iteration of this step succeeded
      better = ok & (step_l2 < o_best_l2)
      o_best_l2[better] = step_l2[better]
      o_best_img[better] = step_img[better]
      upper = np.where(ok, np.minimum(upper, const), upper)
      lower = np.where(ok, lower, np.maximum(lower, const))
      const = np.where(upper < 1e9, (lower + upper) / 2.0,
                       np.where(ok, const, const * 10.0))
    fb_found = (o_fb_f2 < np.inf) if self._fallback else np.zeros(b, bool)
    return o_best_img, o_best_l2 < _NO_L2, o_fb_img, fb_found
