"""What test_adv.py --mode=characteristics adds, per 1000 images, on ResNet-32 on this machine.

Runs the code path of characteristics_runner.attack_characteristics on in-memory images
(no result folder needed): the noisy copies, the flattened layer outputs of the normal,
adversarial and noisy images, their LID (k 20, minibatch 100), and the Mahalanobis scores of
every layer at the 7 pre-processing eps (each eps > 0 one backward and two forward passes per
layer). Beside it, one forward pass over the same images (what evaluating the attacked images
costs anyway) as the unit to compare with. The network is freshly initialized (the cost does
not depend on the weights); the "adversarial" images are the normal ones plus a sign step.

    python -m benchmarks.characteristics_cost [--images 1000] [--units 5] [--repeats 1]
"""
import argparse
import os
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

import dataset_input  # pylint: disable=g-import-not-at-top
from rce.detection import characteristics  # pylint: disable=g-import-not-at-top
from rce.detection import characteristics_runner  # pylint: disable=g-import-not-at-top
import resnet_model  # pylint: disable=g-import-not-at-top

tf1 = tf.compat.v1


class _Model(object):
  """A freshly initialized ResNet in a session, with the attributes of a RestoredModel."""

  def __init__(self, units, seed=0):
    self.graph = tf.Graph()
    with self.graph.as_default():
      tf1.set_random_seed(seed)
      self.images = tf1.placeholder(tf.float32, [None, 28, 28, 1])
      net = resnet_model.build_network(resnet_model.default_hparams(num_residual_units=units),
                                       self.images, 'eval')
      self.logits, self.feature, self.layers = net.logits, net.feature, net.layers
      self.sess = tf1.Session(graph=self.graph)
      self.sess.run(tf1.global_variables_initializer())

  def outputs(self, images, batch_size=100):
    out = [self.sess.run([self.logits, self.feature], {self.images: images[s:s + batch_size]})
           for s in range(0, len(images), batch_size)]
    return np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out])


def _timed(fn):
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


def main(argv=None):
  parser = argparse.ArgumentParser(prog='python -m benchmarks.characteristics_cost',
                                   description=__doc__.splitlines()[0])
  parser.add_argument('--images', type=int, default=1000)
  parser.add_argument('--units', type=int, default=5, help='5 = ResNet-32')
  parser.add_argument('--batch_size', type=int, default=100)
  args = parser.parse_args(argv)

  train, train_labels = dataset_input.digits_arrays()[:2]
  train = train[..., None] - 0.5  # NHWC in [-0.5, 0.5], as the model reads them
  rng = np.random.RandomState(0)
  normal = train[rng.randint(0, len(train), args.images)]
  adv = np.clip(normal + 0.1 * np.sign(rng.randn(*normal.shape)), -0.5, 0.5).astype(np.float32)
  model = _Model(args.units)
  plain = characteristics_runner.LayerModel(model)
  stats_arrays = characteristics_runner.training_statistics(
      plain.names, plain.outputs(train, pooled=True), train_labels, 10)
  stats = {n: (stats_arrays[characteristics.stats_key('means', n)],
               stats_arrays[characteristics.stats_key('precision', n)])
           for n in plain.names}
  with model.graph.as_default():
    layer_model = characteristics_runner.LayerModel(model, stats)
  model.outputs(normal[:args.batch_size])  # warm-up: graph optimization, thread pools
  layer_model.preprocessed_all(normal[:args.batch_size], 0.001)

  times = {}
  _, times['forward pass (reference)'] = _timed(lambda: model.outputs(normal, args.batch_size))
  noisy, times['noisy copies'] = _timed(lambda: characteristics.noisy_copies(
      normal, float(np.mean(np.linalg.norm((adv - normal).reshape(len(adv), -1), axis=1))), 0))
  images = {'normal': normal, 'adv': adv, 'noisy': noisy}
  flat, times['layer outputs (3 sets)'] = _timed(lambda: {
      s: layer_model.outputs(images[s], pooled=False, batch_size=args.batch_size)
      for s in images})
  _, times['LID (5 layers, 3 sets)'] = _timed(lambda: characteristics.lid_characteristics(
      flat['normal'], {'adv': flat['adv'], 'noisy': flat['noisy']}, k=20, batch_size=100))
  _, times['Mahalanobis (5 layers x 7 eps, 3 sets)'] = _timed(lambda: [
      characteristics_runner.mahalanobis_all(layer_model, stats, images[s], args.batch_size)
      for s in images])
  model.sess.close()

  per = 1000.0 / args.images
  total = sum(v for k, v in times.items() if 'reference' not in k)
  reference = times['forward pass (reference)']
  print('\ncharacteristics of %d images, ResNet-%d (num_residual_units=%d), mnist shape, '
        'batch %d, on %d CPU cores:\n' % (args.images, 6 * args.units + 2, args.units,
                                           args.batch_size, os.cpu_count() or 1))
  print('| part | s per 1000 images | x one forward pass |')
  print('|---|---|---|')
  for name, seconds in times.items():
    print('| %s | %.1f | %.1f |' % (name, seconds * per, seconds / reference))
  print('| **total added** | **%.1f** | **%.1f** |' % (total * per, total / reference))
  return 0


if __name__ == '__main__':
  sys.exit(main())
