"""Workarounds for the peer libraries' quirks, one per pitfall, used by benchmarks.peer_adapters.

Written against ART 1.20.1, foolbox 3.3.4 and cleverhans 4.0.0 on TensorFlow 2.21, Keras 3
and NumPy 2; none of them imports a peer library, so they work (and can be checked) without
one. Each quirk and what is done about it: "Pitfalls" in benchmarks/README.md.
"""
import contextlib

import numpy as np
import tensorflow as tf


def numpy2_aliases():
  """Restores NumPy 1 aliases removed in NumPy 2 (only used if a peer import needs them)."""
  for name, value in (('float', float), ('int', int), ('bool', bool), ('complex', complex),
                      ('object', object), ('str', str)):
    if name not in np.__dict__:
      setattr(np, name, value)


class KerasAdamShim(object):
  """A Keras 3 Adam with the Keras 2 `variables()` method that cleverhans 4's C&W calls.

  cleverhans zeroes `optimizer.variables()` at every binary-search step to restart Adam. Here
  that is the iteration counter and the m/v slots of the variable the optimizer was last
  applied to (built on first use, as Keras 2 did), never the learning rate, which Keras 3
  also lists among its variables.
  """

  def __init__(self, learning_rate):
    self._learning_rate = learning_rate
    self._opt = None
    self._var = None

  def variables(self):
    if self._opt is None:
      return []
    return [v for v in self._opt.variables if 'learning_rate' not in v.name]

  def apply_gradients(self, grads_and_vars):
    grads_and_vars = list(grads_and_vars)
    var = grads_and_vars[0][1]
    if self._var is not var:
      self._opt = tf.keras.optimizers.Adam(self._learning_rate)
      self._opt.build([var])
      self._var = var
    return self._opt.apply_gradients(grads_and_vars)


class TfWithPerExampleOnes(object):
  """`tf` for cleverhans's carlini_wagner_l2 module, with tf.ones(shape) cut to shape[:1].

  In that module tf.ones is called twice: `tf.ones(shape[:1]) * 1e10` (the upper bounds,
  already [B]) and `const = tf.ones(shape) * initial_const` with the image shape, the bug.
  """

  def __getattr__(self, name):
    return getattr(tf, name)

  @staticmethod
  def ones(shape, *args, **kwargs):
    shape = tf.TensorShape(shape)
    if shape.rank is not None and shape.rank > 1:
      shape = shape[:1]
    return tf.ones(shape, *args, **kwargs)


@contextlib.contextmanager
def per_example_const(cw_module):
  """Runs cleverhans's C&W with one constant c per example (see TfWithPerExampleOnes)."""
  saved = cw_module.tf
  cw_module.tf = TfWithPerExampleOnes()
  try:
    yield
  finally:
    cw_module.tf = saved


def zero_rows_to_input(adv, x):
  """foolbox 3 C&W's all-zero images (never made adversarial) put back to the input.

  foolbox starts C&W from best_advs = zeros and returns zeros where it never found an
  adversarial; its `success` is then re-evaluated on that zero image (an untargeted run can
  count it). An all-zero row never comes out of the tanh-space optimisation.

  Args:
    adv: float32 [N, H, W, C], foolbox's clipped images; changed in place and returned.
    x: float32 [N, H, W, C], the inputs (an all-zero input keeps its zero image).
  """
  never = np.all(adv.reshape(len(x), -1) == 0, axis=1)
  never &= ~np.all(x.reshape(len(x), -1) == 0, axis=1)
  adv[never] = x[never]
  return adv
