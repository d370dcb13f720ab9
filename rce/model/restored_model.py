"""A trained model restored once into a session, with placeholders for numpy batches.

test_adv.py builds everything it needs (attacks included) on top of this one graph: the
model function applies the RCE flip, images are fed, nothing is added per batch or round.
"""
import collections

import numpy as np
import tensorflow as tf

import dataset_input
from rce import placement
from rce.model import checkpoints
from rce.results import consistency
from rce.results import provenance
from rce.results import result_files
import resnet_model

tf1 = tf.compat.v1


class RestoredModel(object):
  """Graph + session of the eval-mode ResNet of a checkpoint.

  Attributes:
    images: float32 placeholder [None, H, W, C] in [-0.5, 0.5].
    logits: flipped logits [None, 10] of `images`; feature: [None, 64].
    layers: the network's layer outputs of `images` (resnet_model.LAYER_NAMES).
    model_fn: x -> (flipped logits, feature), sharing the restored variables.
    layers_fn: x -> (flipped logits, feature, layers), the same with the layer outputs.
  """

  def __init__(self, hps, dataset, log_root, config=None):
    self.hps = hps
    self.spec = dataset_input.get_spec(dataset)
    self.ckpt = checkpoints.require_checkpoint(log_root)
    self.graph = tf.Graph()
    with self.graph.as_default():
      self.model_fn = resnet_model.make_model_fn(hps)
      self.layers_fn = resnet_model.make_layers_fn(hps)
      self.images = tf1.placeholder(tf.float32, [None] + list(dataset_input.image_shape(
          self.spec)), name='images')
      net = resnet_model.build_network(hps, self.images, 'eval')
      self.logits, self.feature, self.layers = net.logits, net.feature, net.layers
      self.variables = resnet_model.model_variables()
    self.sess = tf1.Session(graph=self.graph, config=config)
    with self.graph.as_default():
      self.info = checkpoints.restore(self.sess, self.ckpt, self.variables)
    self.step = self.info.step

  def init_new_variables(self):
    """Initializes the variables added after the restore (attack state), not the model's."""
    with self.graph.as_default():
      restored = set(self.variables)
      fresh = [v for v in tf1.global_variables() if v not in restored]
      if fresh:
        self.sess.run(tf1.variables_initializer(fresh))

  def outputs(self, images, batch_size=100):
    """Flipped logits [N, 10] and features [N, 64] of numpy `images`, batch by batch."""
    logits, features = [], []
    for start in range(0, len(images), batch_size):
      lg, ft = self.sess.run([self.logits, self.feature],
                             {self.images: images[start:start + batch_size]})
      logits.append(lg)
      features.append(ft)
    return np.concatenate(logits), np.concatenate(features)

  def close(self):
    self.sess.close()


# Where a mode restores its model from: the model's HParams, the data set, --log_root, and
# --num_gpus (a mode runs on one device at most: 0 is the CPU).
ModelSource = collections.namedtuple('ModelSource', ['hps', 'dataset', 'log_root',
                                                     'num_gpus'])


def restore(source):
  """The RestoredModel of the latest checkpoint in `source.log_root`, on one device."""
  _, config = placement.tower_devices(min(source.num_gpus, 1))
  return RestoredModel(source.hps, source.dataset, source.log_root, config)


def restored(model, log_root):
  """The consistency.Restored of a RestoredModel, for the checks of what belongs to it."""
  return consistency.Restored(model.info.fingerprint, log_root, model.ckpt, model.step)


def result_provenance(model, data, flags):
  """The provenance block of a result `model` made from the data record `data`, with the
  result-changing `flags` ({name: value})."""
  return provenance.record(
      provenance.model_record(model.info, result_files.model_name(model.hps.RCE_train),
                              model.hps), data, flags)
