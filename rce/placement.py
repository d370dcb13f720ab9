"""The devices a script runs on: GPUs present, and the towers --num_gpus asks for.

Training, evaluation and the attacks all set up their devices here, so an evaluation script
needs nothing of the training graph. When fewer GPUs exist than towers are asked for, the
towers run on virtual CPU devices of the session (`ConfigProto.device_count`).
"""
from absl import logging
import tensorflow as tf

tf1 = tf.compat.v1


def available_gpus():
  return len(tf.config.list_physical_devices('GPU'))


def tower_devices(num_gpus, gpus_present=None):
  """Devices for `num_gpus` towers and the session ConfigProto that provides them.

  Args:
    num_gpus: the --num_gpus flag; 0 is one tower on the CPU.
    gpus_present: GPUs that exist (default: the ones TensorFlow sees).

  Returns:
    (devices, config): a list of device strings, one per tower, and a ConfigProto.
  """
  if num_gpus < 0:
    raise ValueError('--num_gpus must be >= 0, got %d' % num_gpus)
  gpus_present = available_gpus() if gpus_present is None else gpus_present
  config = tf1.ConfigProto(allow_soft_placement=True)
  config.gpu_options.allow_growth = True
  if num_gpus == 0:
    return ['/cpu:0'], config
  if gpus_present >= num_gpus:
    return ['/gpu:%d' % i for i in range(num_gpus)], config
  logging.warning('--num_gpus=%d but %d GPU(s) present: running the %d tower(s) on %d '
                  'virtual CPU device(s)', num_gpus, gpus_present, num_gpus, num_gpus)
  config.device_count['CPU'] = num_gpus
  return ['/cpu:%d' % i for i in range(num_gpus)], config
