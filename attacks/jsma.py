"""Jacobian-based saliency map attack (Papernot et al., https://arxiv.org/abs/1511.07528).

Targeted, increasing one pixel per iteration by `eps` (JSMA's theta) with clipping, vectorized
over the batch in one `tf.while_loop` with a per-example done-mask (the paper's code looped
example by example). Only the still-active examples are gathered into each iteration's forward
and backward pass, so finished examples cost nothing.

The saliency map is Papernot's (their eq. 8, the single-pixel form) on the softmax F of the
logits: for target t and pixel i, alpha_i = dF_t/dx_i, beta_i = sum_{j != t} dF_j/dx_i and
S_i = alpha_i * |beta_i| if alpha_i > 0 and beta_i < 0, else 0. Because softmax outputs sum to
one, beta_i = -alpha_i identically, so S_i = alpha_i^2 on {alpha_i > 0}; its argmax is the
argmax of d log F_t / dx_i over the pixels where it is positive (log is monotone and F_t > 0
is a per-example factor). That form is what is computed: one backward pass per iteration and
no underflow when F_t is tiny.
"""
import numpy as np
import tensorflow as tf

from attacks import gradient

tf1 = tf.compat.v1

MAX_ITER = 100  # at most 100 changed pixels per image, as the paper
THETA = 1.0  # default eps: one increase takes any pixel of [-0.5, 0.5] to clip_max


def _jsma_batch(logits_fn, x, eps, y_target, max_iter, clip_min, clip_max):
  """The vectorized JSMA loop over a batch; see `jsma`."""
  image_shape = x.shape[1:].as_list()
  num_features = int(np.prod(image_shape))
  x_flat = tf.reshape(x, [-1, num_features])
  target = tf.argmax(y_target, axis=1)
  # Pixels already at clip_max cannot increase: they are never in the search domain.
  domain0 = x_flat < clip_max
  active0 = tf.reduce_any(domain0, axis=1)

  def body(x_cur, domain, active):
    rows = tf.where(active)[:, 0]
    x_a = tf.gather(x_cur, rows)
    domain_a = tf.gather(domain, rows)
    target_a = tf.gather(target, rows)
    logits = logits_fn(tf.reshape(x_a, [-1] + image_shape))
    reached = tf.equal(tf.argmax(logits, axis=1), target_a)
    log_p_target = tf.reduce_sum(
        tf.one_hot(target_a, tf.shape(logits)[1]) * tf.nn.log_softmax(logits), axis=1)
    # Per-example gradients: each row of the sum depends on its own image only (eval mode).
    grad = tf.gradients(tf.reduce_sum(log_p_target), x_a)[0]
    candidates = domain_a & (grad > 0)
    scores = tf.where(candidates, grad, tf.fill(tf.shape(grad), -np.inf))
    best = tf.argmax(scores, axis=1)
    # No pixel in the domain raises F_t: the example is stuck and stops (a failure).
    salient = tf.reduce_any(candidates, axis=1)
    modify = tf.logical_not(reached) & salient
    change = tf.one_hot(best, num_features) * tf.cast(modify, tf.float32)[:, None]
    x_new = tf.minimum(clip_max, x_a + eps * change)
    domain_new = domain_a & (x_new < clip_max)
    active_new = modify & tf.reduce_any(domain_new, axis=1)
    index = rows[:, None]
    return (tf.tensor_scatter_nd_update(x_cur, index, x_new),
            tf.tensor_scatter_nd_update(domain, index, domain_new),
            tf.tensor_scatter_nd_update(active, index, active_new))

  # Each pass first checks (with a forward pass) whether the target is reached, then changes
  # one pixel of the examples still short of it: max_iter passes change at most max_iter pixels.
  x_adv, _, _ = tf1.while_loop(
      lambda x_cur, domain, active: tf.reduce_any(active), body,
      [x_flat, domain0, active0], maximum_iterations=max_iter, back_prop=False,
      name='jsma_steps')
  return tf.reshape(x_adv, tf.shape(x))


def jsma(logits_fn, x, eps=THETA, y_target=None, max_iter=MAX_ITER, clip_min=gradient.CLIP_MIN,
         clip_max=gradient.CLIP_MAX, per_example=False):
  """Targeted JSMA: increase the most salient pixel by eps until the target is reached.

  An example stops as soon as its prediction is the target, when no pixel of its search
  domain can raise the target probability, or after max_iter changed pixels; a pixel leaves
  the search domain once it reaches clip_max.

  Args:
    logits_fn: x [B, H, W, C] -> logits [B, K].
    x: [B, H, W, C] float32 images in [-0.5, 0.5] (H, W, C static, B dynamic).
    eps: scalar (number or float tensor) added to a chosen pixel (then clipped).
    y_target: one-hot targets [B, K]; default the least-likely class of the clean input.
    max_iter: most pixel changes per example (Python int).
    clip_min, clip_max: the valid pixel range.
    per_example: run the same loop one example at a time (tf.map_fn, sequentially), as the
      original code did; for comparison and benchmarks. The result is the same.

  Returns:
    [B, H, W, C] float32 in [clip_min, clip_max] differing from x in at most max_iter pixels.
  """
  x = tf.cast(tf.convert_to_tensor(x), tf.float32)
  eps = tf.cast(tf.convert_to_tensor(eps), tf.float32)
  if y_target is None:
    y_target = gradient.least_likely(logits_fn(x))
  y_target = tf.cast(y_target, tf.float32)
  if not per_example:
    return tf.stop_gradient(
        _jsma_batch(logits_fn, x, eps, y_target, max_iter, clip_min, clip_max))

  def one(args):
    xi, yi = args
    return _jsma_batch(logits_fn, xi[None], eps, yi[None], max_iter, clip_min, clip_max)[0]

  x_adv = tf.map_fn(one, (x, y_target), fn_output_signature=tf.float32,
                    parallel_iterations=1, name='jsma_per_example')
  return tf.stop_gradient(x_adv)
