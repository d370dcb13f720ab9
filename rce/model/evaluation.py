"""Clean precision of a model: correct predictions on the prediction logits (RCE flip applied).

Training's periodic test precision and test_nor.py's evaluation build the same graph here.
"""
import tensorflow as tf

import dataset_input
import resnet_model

tf1 = tf.compat.v1


def correct_predictions(logits, labels):
  """Bool [B]: argmax of the prediction logits equals the one-hot label."""
  return tf.equal(tf.argmax(logits, axis=1), tf.argmax(labels, axis=1))


def precision(logits, labels):
  """Fraction of the batch predicted correctly (prediction logits: the RCE flip applied)."""
  return tf.reduce_mean(tf.cast(correct_predictions(logits, labels), tf.float32))


def correct_and_count(logits, labels):
  """(number correct, batch size) as int64 scalars, for precision over many batches."""
  correct = tf.reduce_sum(tf.cast(correct_predictions(logits, labels), tf.int64))
  return correct, tf.shape(labels, out_type=tf.int64)[0]


def build_test_precision(hps, dataset, pattern, batch_size, files=None):
  """The eval-mode model on a fixed-order pass over the test files, in the default graph.

  Returns (iterator, correct, count): re-initialize `iterator` for each pass, then sum
  `correct` and `count` over its batches.
  """
  with tf.device('/cpu:0'):
    ds = dataset_input.make_dataset(dataset, pattern, batch_size, train=False, files=files)
    iterator = tf1.data.make_initializable_iterator(ds)
    images, labels = iterator.get_next()
  correct, count = correct_and_count(resnet_model.build_network(hps, images, 'eval').logits,
                                     labels)
  return iterator, correct, count
