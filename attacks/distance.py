"""Per-example distances between image batches (numpy), shared by the attacks and reports."""
import numpy as np


def l2_per_example(a, b):
  """||a_i - b_i||_2 for each example i of two batches [N, ...]: float [N]."""
  a, b = np.asarray(a), np.asarray(b)
  return np.sqrt(np.sum(np.square(a - b).reshape(len(a), -1), axis=1))
