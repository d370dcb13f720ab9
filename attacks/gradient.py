"""Noise and gradient-sign attacks (random, FGSM, BIM, ILCM) as batch graph functions.

Every function takes a `logits_fn(x) -> [B, K]` (the flipped logits of an RCE model, the raw
ones of a CE model: attacks never know which) and images `x` [B, H, W, C] float32 in
[-0.5, 0.5] with a dynamic batch size, and returns adversarial images of the same shape and
range. `eps` may be a Python number or a scalar float tensor (a placeholder fed per round), so
the caller builds the graph once and sweeps eps without adding ops. Iterative attacks run in a
`tf.while_loop(back_prop=False)`, so the graph size does not depend on `nb_iter`.
Argument names follow cleverhans (`eps`, `clip_min`, `clip_max`, `y`, `y_target`, `nb_iter`).
"""
import tensorflow as tf

from rce.tables import perturbation

tf1 = tf.compat.v1

CLIP_MIN = perturbation.IMAGE_MIN
CLIP_MAX = perturbation.IMAGE_MAX
NB_ITER = 10  # BIM and ILCM take 10 steps of eps/10, as the paper


def model_prediction(logits):
  """One-hot argmax of `logits` [B, K]: the model's own label, gradient stopped."""
  logits = tf.stop_gradient(logits)
  return tf.one_hot(tf.argmax(logits, axis=1), tf.shape(logits)[1], dtype=tf.float32)


def least_likely(logits):
  """One-hot argmin of `logits` [B, K]: the least-likely class, gradient stopped."""
  logits = tf.stop_gradient(logits)
  return tf.one_hot(tf.argmin(logits, axis=1), tf.shape(logits)[1], dtype=tf.float32)


def _ce_gradient(logits_fn, x, labels):
  """d/dx of the summed per-example cross-entropy CE(labels, logits_fn(x)); [B, H, W, C]."""
  loss = tf.reduce_sum(tf.nn.softmax_cross_entropy_with_logits(
      labels=tf.stop_gradient(labels), logits=logits_fn(x)))
  return tf.gradients(loss, x)[0]


def _as_float(value):
  return tf.cast(tf.convert_to_tensor(value), tf.float32)


def random_noise(x, eps, clip_min=CLIP_MIN, clip_max=CLIP_MAX, seed=None):
  """Adds uniform noise in [-eps, eps] to every pixel, then clips.

  Args:
    x: [B, H, W, C] float32 images in [-0.5, 0.5].
    eps: scalar (number or float tensor), the noise amplitude in pixel units.
    clip_min, clip_max: the valid pixel range.
    seed: op-level seed of the uniform draw.

  Returns:
    [B, H, W, C] float32 in [clip_min, clip_max]; equals `x` when eps is 0.
  """
  x = _as_float(x)
  noise = tf.random.uniform(tf.shape(x), -1.0, 1.0, dtype=tf.float32, seed=seed)
  return tf.clip_by_value(x + _as_float(eps) * noise, clip_min, clip_max)


def fgsm(logits_fn, x, eps, y=None, clip_min=CLIP_MIN, clip_max=CLIP_MAX):
  """Fast gradient sign method: one step x + eps * sign(grad_x CE(y, logits_fn(x))), clipped.

  Args:
    logits_fn: x [B, H, W, C] -> logits [B, K].
    x: [B, H, W, C] float32 images in [-0.5, 0.5].
    eps: scalar (number or float tensor), the L-inf step.
    y: one-hot labels [B, K] to move away from; default the model's own prediction on x
      (avoids the label-leaking effect, as cleverhans).
    clip_min, clip_max: the valid pixel range.

  Returns:
    [B, H, W, C] float32 in [clip_min, clip_max].
  """
  x = _as_float(x)
  if y is None:
    y = model_prediction(logits_fn(x))
  grad = _ce_gradient(logits_fn, x, y)
  x_adv = x + _as_float(eps) * tf.sign(grad)
  return tf.stop_gradient(tf.clip_by_value(x_adv, clip_min, clip_max))


def _iterative_sign(logits_fn, x, eps, labels, nb_iter, direction, clip_min, clip_max):
  """nb_iter steps of direction * eps/nb_iter * sign(grad CE(labels)), projected and clipped."""
  eps = _as_float(eps)
  step = eps / float(nb_iter)
  lower, upper = x - eps, x + eps

  def body(i, x_adv):
    grad = _ce_gradient(logits_fn, x_adv, labels)
    x_adv = x_adv + direction * step * tf.sign(grad)
    # The steps add up to eps at most; the projection only absorbs float round-off.
    x_adv = tf.clip_by_value(tf.clip_by_value(x_adv, lower, upper), clip_min, clip_max)
    return i + 1, x_adv

  _, x_adv = tf1.while_loop(lambda i, _: i < nb_iter, body, [tf.constant(0), x],
                            back_prop=False, name='sign_steps')
  return tf.stop_gradient(x_adv)


def bim(logits_fn, x, eps, y=None, nb_iter=NB_ITER, clip_min=CLIP_MIN, clip_max=CLIP_MAX):
  """Basic iterative method (Kurakin et al.): nb_iter FGSM steps of eps/nb_iter.

  Each step is clipped to the valid range (and to the eps L-inf ball around x).

  Args:
    logits_fn: x [B, H, W, C] -> logits [B, K].
    x: [B, H, W, C] float32 images in [-0.5, 0.5].
    eps: scalar (number or float tensor), the total L-inf budget.
    y: one-hot labels [B, K] to move away from; default the model's prediction on clean x.
    nb_iter: number of steps (Python int).
    clip_min, clip_max: the valid pixel range.

  Returns:
    [B, H, W, C] float32 in [clip_min, clip_max], within eps of x in L-inf.
  """
  x = _as_float(x)
  if y is None:
    y = model_prediction(logits_fn(x))
  return _iterative_sign(logits_fn, x, eps, y, nb_iter, 1.0, clip_min, clip_max)


ILCM_TARGETS = ('original', 'onehot')


def ilcm_target_vector(y_target, target='original', clip_min=CLIP_MIN, clip_max=CLIP_MAX):
  """The vector ILCM descends the softmax cross-entropy towards, from one-hot targets [B, K].

  'onehot' is the textbook ILCM. 'original' is what the paper's code built,
  `one_hot(least_likely, on_value=clip_max, off_value=clip_min)`: +0.5 for the target and
  -0.5 elsewhere, fed to TensorFlow's fused softmax cross-entropy like here. That op
  backpropagates softmax(z) - t whatever the labels sum to (the true derivative of the loss,
  softmax(z) * sum(t) - t, differs: sum(t) = 1 - K/2), so each step descends along p - t:
  the target logit rises by 0.5 - p_t and every other logit falls by 0.5 + p_j, instead of
  the one-hot's 1 - p_t and p_j. That produced the paper's ILCM row.
  """
  if target == 'onehot':
    return y_target
  if target == 'original':
    return y_target * (clip_max - clip_min) + clip_min
  raise ValueError('unknown ILCM target %r; expected one of: %s'
                   % (target, ', '.join(ILCM_TARGETS)))


def ilcm(logits_fn, x, eps, y_target=None, nb_iter=NB_ITER, clip_min=CLIP_MIN,
         clip_max=CLIP_MAX, target='original'):
  """Iterative least-likely class method ('tgsm'): nb_iter steps DESCENDING CE to y_target.

  Args:
    logits_fn: x [B, H, W, C] -> logits [B, K].
    x: [B, H, W, C] float32 images in [-0.5, 0.5].
    eps: scalar (number or float tensor), the total L-inf budget.
    y_target: one-hot targets [B, K]; default the least-likely class of the clean input.
    nb_iter: number of steps of eps/nb_iter (Python int).
    clip_min, clip_max: the valid pixel range.
    target: 'original' (the paper's +/-0.5 vector, the default) or 'onehot' (textbook); see
      `ilcm_target_vector`.

  Returns:
    [B, H, W, C] float32 in [clip_min, clip_max], within eps of x in L-inf.
  """
  x = _as_float(x)
  if y_target is None:
    y_target = least_likely(logits_fn(x))
  vector = ilcm_target_vector(y_target, target, clip_min, clip_max)
  return _iterative_sign(logits_fn, x, eps, vector, nb_iter, -1.0, clip_min, clip_max)


tgsm = ilcm  # the original code's --attack_method name
