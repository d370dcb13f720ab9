"""Adversarial examples per second of each attack on a ResNet-32 with MNIST-shaped input.

Builds ResNet-32 (num_residual_units=5) on [B, 28, 28, 1], trains it a few steps on the
bundled digits (so the attacks see a non-degenerate model), builds every attack graph once and
times one run of each after a small warm-up run. JSMA is timed twice on the same images: the
vectorized batch loop, and the same graph fed one example at a time (the original code's loop),
with the speed-up ratio and a check that both give the same images.

  python -m benchmarks.attack_throughput                     # the default, a few minutes on CPU
  python -m benchmarks.attack_throughput --attacks=fgsm,jsma --batch_size=100
  python -m benchmarks.attack_throughput --cw_iterations=1000 --cw_search_steps=9   # GPU
"""
import argparse
import os

import numpy as np
import tensorflow as tf

import attacks
from benchmarks import timing
import dataset_input
import resnet_model

tf1 = tf.compat.v1

ALL = ('random', 'fgsm', 'bim', 'tgsm', 'jsma', 'carliniL2', 'carliniL2_highcon')
SPEC = dataset_input.get_spec('mnist')  # the bundled digits are mnist-shaped


def parse_args(argv=None):
  parser = argparse.ArgumentParser(prog='python -m benchmarks.attack_throughput',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('--attacks', default=','.join(ALL),
                      help='comma-separated subset of: %s' % ', '.join(ALL))
  parser.add_argument('--batch_size', type=int, default=200,
                      help='images per run for random/fgsm/bim/tgsm (the paper attacks 200)')
  parser.add_argument('--eps', type=float, default=0.1, help='eps of the eps attacks')
  parser.add_argument('--nb_iter', type=int, default=10, help='steps of bim and tgsm')
  parser.add_argument('--jsma_batch', type=int, default=32, help='images for JSMA')
  parser.add_argument('--jsma_eps', type=float, default=1.0, help='JSMA theta')
  parser.add_argument('--jsma_max_iter', type=int, default=100, help='JSMA max changed pixels')
  parser.add_argument('--cw_batch', type=int, default=50, help='images for C&W')
  parser.add_argument('--cw_iterations', type=int, default=50,
                      help='Adam iterations per binary-search step (paper: 10000)')
  parser.add_argument('--cw_search_steps', type=int, default=2,
                      help='binary-search steps (paper: 9)')
  parser.add_argument('--num_residual_units', type=int, default=5, help='5 = ResNet-32')
  parser.add_argument('--train_steps', type=int, default=80,
                      help='quick training steps before attacking (0 = random init)')
  parser.add_argument('--threads', type=int, default=0, help='intra-op threads (0 = TF)')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  args.attacks = [a for a in args.attacks.split(',') if a]
  unknown = [a for a in args.attacks if a not in ALL]
  if unknown:
    parser.error('unknown attack(s) %s; choose from %s' % (unknown, ', '.join(ALL)))
  return args


def images_of(pool, n):
  """The first n pool images, tiled when the pool is smaller."""
  reps = -(-n // len(pool))
  return np.concatenate([pool] * reps)[:n]


def main(argv=None):
  args = parse_args(argv)
  tf1.disable_eager_execution()
  np.random.seed(args.seed)
  train_x, train_y, test_x, test_y = dataset_input.digits_arrays()
  train_x = (train_x - 0.5)[..., None].astype(np.float32)
  pool_x = (test_x - 0.5)[..., None].astype(np.float32)
  shape, k = dataset_input.image_shape(SPEC), SPEC.num_classes
  onehot = np.eye(k, dtype=np.float32)
  hps = resnet_model.default_hparams(num_residual_units=args.num_residual_units,
                                     num_classes=k, RCE_train=True)
  config = tf1.ConfigProto(intra_op_parallelism_threads=args.threads)
  graph = tf.Graph()
  with graph.as_default():
    tf1.set_random_seed(args.seed)
    sess = tf1.Session(config=config)
    # A few RCE training steps (momentum, BN updates).
    tx = tf1.placeholder(tf.float32, [None] + list(shape))
    ty = tf1.placeholder(tf.float32, [None, k])
    net = resnet_model.build_network(hps, tx, 'train')
    loss = (resnet_model.classification_loss(net.raw_logits, ty, hps.RCE_train)
            + resnet_model.weight_decay(hps))
    with tf.control_dependencies(net.update_ops):
      train_op = tf1.train.MomentumOptimizer(0.05, 0.9).minimize(loss)
    logits_fn = resnet_model.make_logits_fn(hps)  # prediction logits
    x = tf1.placeholder(tf.float32, [None] + list(shape))
    eps = tf1.placeholder(tf.float32, [])
    predictions = tf.argmax(logits_fn(x), 1)
    build = {
        'random': lambda: attacks.random_noise(x, eps, seed=args.seed),
        'fgsm': lambda: attacks.fgsm(logits_fn, x, eps),
        'bim': lambda: attacks.bim(logits_fn, x, eps, nb_iter=args.nb_iter),
        'tgsm': lambda: attacks.ilcm(logits_fn, x, eps, nb_iter=args.nb_iter),
        'jsma': lambda: attacks.jsma(logits_fn, x, eps, max_iter=args.jsma_max_iter),
    }
    ops = {name: op() for name, op in build.items() if name in args.attacks}
    cws = {}
    for name in ('carliniL2', 'carliniL2_highcon'):
      if name in args.attacks:
        cws[name] = attacks.CarliniWagnerL2(
            sess, logits_fn, shape, args.cw_batch,
            confidence=attacks.get_attack(name).info.cw_stages[0].confidence,
            max_iterations=args.cw_iterations,
            binary_search_steps=args.cw_search_steps, num_classes=k)
    params = int(sum(np.prod(v.shape) for v in tf1.trainable_variables()))
    sess.run(tf1.global_variables_initializer())
    graph.finalize()

    rng = np.random.RandomState(args.seed)

    def train():
      for _ in range(args.train_steps):
        idx = rng.randint(0, len(train_x), 64)
        sess.run(train_op, {tx: train_x[idx], ty: onehot[train_y[idx]]})

    _, train_s, _ = timing.timed(train)
    accuracy = np.mean(sess.run(predictions, {x: pool_x}) == test_y)
    print('ResNet-%d (%d parameters) on [B, %s]; %d RCE training steps (%.1fs), '
          'clean accuracy on %d digits test images %.3f'
          % (6 * args.num_residual_units + 2, params, ', '.join(map(str, shape)),
             args.train_steps, train_s, len(pool_x), accuracy))
    print('TensorFlow %s, %d CPU cores visible; eps attacks and JSMA timed after a warm-up '
          'run on 2 images, C&W timings include its first run'
          % (tf.__version__, os.cpu_count()))
    print()
    print('fooled = fraction of the batch whose predicted label changed; adv/s = batch / '
          'seconds')
    print('%-18s %6s  %-34s %9s %9s  %s' % ('attack', 'batch', 'iterations', 'seconds',
                                          'adv/s', 'fooled'))

    def report(name, n, iterations, seconds, adv, clean):
      fooled = np.mean(sess.run(predictions, {x: adv}) != clean)
      print('%-18s %6d  %-34s %9.2f %9.1f  %.2f' % (name, n, iterations, seconds,
                                                  n / seconds, fooled))

    for name in ('random', 'fgsm', 'bim', 'tgsm'):
      if name not in args.attacks:
        continue
      images = images_of(pool_x, args.batch_size)
      clean = sess.run(predictions, {x: images})
      timing.warm_up(lambda: sess.run(ops[name], {x: images[:2], eps: args.eps}))
      adv, seconds, _ = timing.timed(lambda: sess.run(ops[name], {x: images, eps: args.eps}))
      iterations = {'bim': '%d steps' % args.nb_iter, 'tgsm': '%d steps' % args.nb_iter}
      report(name, len(images), iterations.get(name, '1 step') + ', eps %g' % args.eps,
             seconds, adv, clean)

    if 'jsma' in args.attacks:
      images = images_of(pool_x, args.jsma_batch)
      clean = sess.run(predictions, {x: images})
      feed = {eps: args.jsma_eps}
      timing.warm_up(lambda: sess.run(ops['jsma'], {**feed, x: images[:2]}))
      batch_adv, batch_s, _ = timing.timed(lambda: sess.run(ops['jsma'], {**feed, x: images}))

      def one_at_a_time():
        return np.concatenate([sess.run(ops['jsma'], {**feed, x: images[i:i + 1]})
                               for i in range(len(images))])

      single_adv, single_s, _ = timing.timed(one_at_a_time)
      what = '<= %d pixels, theta %g' % (args.jsma_max_iter, args.jsma_eps)
      report('jsma (batch)', len(images), what, batch_s, batch_adv, clean)
      report('jsma (1 at a time)', len(images), what, single_s, single_adv, clean)
      same = np.mean([np.array_equal(a, b) for a, b in zip(batch_adv, single_adv)])
      same_label = np.mean(sess.run(predictions, {x: batch_adv})
                           == sess.run(predictions, {x: single_adv}))
      changed = (batch_adv != images).reshape(len(images), -1).sum(1)
      print('%-18s speed-up of the batch loop %.1fx; changed pixels mean %.1f, max %d'
            % ('', single_s / batch_s, changed.mean(), changed.max()))
      print('%-18s batch vs 1-at-a-time: identical images %.0f%%, same final label %.0f%% '
            '(CPU kernels round differently per batch size, ~1e-7 on the logits, which can '
            'flip a near-tied pixel choice late in a run)' % ('', 100 * same, 100 * same_label))

    for name, cw in cws.items():
      images = images_of(pool_x, args.cw_batch)
      clean = sess.run(predictions, {x: images})
      targets = (clean + rng.randint(1, k, len(images))) % k
      adv, seconds, _ = timing.timed(lambda: cw.attack(images, onehot[targets]))
      what = '%d x %d Adam, conf %g' % (args.cw_search_steps, args.cw_iterations,
                                        cw.confidence)
      report(name, len(images), what, seconds, adv, clean)
      ok = cw.last_success
      print('%-18s success %.2f, mean L2 of successes %s'
            % ('', ok.mean(), '%.3f' % cw.last_l2[ok].mean() if ok.any() else 'n/a'))
    print()
    print('C&W ran %d binary-search steps x %d iterations (the paper: 9 x 10000) to keep the '
          'CPU run short; its per-example rate scales about linearly with both.'
          % (args.cw_search_steps, args.cw_iterations))
    sess.close()


if __name__ == '__main__':
  main()
