"""The on-disk formats of test_adv.py: attack results and kernel parameters.

Attack results, in `{attack}_{dataset}/{RCE|CE}/` (or --save_pwd), keep the original's file
names and text/npy formats so its Matlab scripts could still read them. N is the number of
attacked images, R the number of eps rounds (10 for the swept attacks, 1 for C&W):

  labels_true                 N        true labels (text)
  entropy_nor, confidence_nor N        non-ME and confidence of the normal images (text)
  logits_nor                  N x 64   features of the normal images (text; the original's name)
  labels_nor                  N        predicted labels of the normal images (text)
  entropy_adv, confidence_adv R*N      the same for the adversarial images, round-major (text)
  logits_adv                  R*N x 64
  labels_adv, L2_distance     R*N
  nor_img.npy                 [N, H, W, C] in [-0.5, 0.5]
  adv_img.npy                 [R, N, H, W, C] in [-0.5, 0.5]
  summary.json                eps per round, N, R, per-round statistics; written last, so
                              its presence marks a complete result set.

Kernel parameters, in `kernel_para_{dataset}/`: `training_logits_{M}` and
`training_labels_{M}` (text, M = RCE or CE) and `kernel_{M}.npz` (no pickle).
"""
import json
import os

import numpy as np

import io_utils

SUMMARY = 'summary.json'
NOR_FILES = ('entropy_nor', 'confidence_nor', 'logits_nor', 'labels_nor')
ADV_FILES = ('entropy_adv', 'confidence_adv', 'logits_adv', 'labels_adv', 'L2_distance')
TEXT_FILES = NOR_FILES + ADV_FILES + ('labels_true',)
MODELS = ('CE', 'RCE')


class ResultsError(ValueError):
  """Missing, incomplete or inconsistent result files; the message names them."""


def model_name(rce):
  return 'RCE' if rce else 'CE'


def attack_dir(attack, dataset, rce, save_pwd=None, results_dir='.'):
  """`{results_dir}/{attack}_{dataset}/{RCE|CE}`, or --save_pwd when given."""
  if save_pwd:
    return save_pwd
  return os.path.join(results_dir, '%s_%s' % (attack, dataset), model_name(rce))


def kernel_dir(dataset, results_dir='.'):
  return os.path.join(results_dir, 'kernel_para_%s' % dataset)


def save_attack_results(directory, arrays, summary):
  """Writes every result file atomically, summary.json last.

  Args:
    directory: output folder (created).
    arrays: dict with the TEXT_FILES names plus 'nor_img' and 'adv_img'.
    summary: JSON-serializable dict (eps list, statistics, ...).
  """
  io_utils.makedirs(directory)
  for name in TEXT_FILES:
    values = np.asarray(arrays[name])
    fmt = '%d' if name.startswith('labels') else '%.8e'
    io_utils.atomic_savetxt(os.path.join(directory, name), values, fmt=fmt)
  io_utils.atomic_save_npy(os.path.join(directory, 'nor_img.npy'), arrays['nor_img'])
  io_utils.atomic_save_npy(os.path.join(directory, 'adv_img.npy'), arrays['adv_img'])
  io_utils.atomic_write_json(os.path.join(directory, SUMMARY), summary)


def is_complete(directory):
  return os.path.exists(os.path.join(directory, SUMMARY))


def load_summary(directory):
  path = os.path.join(directory, SUMMARY)
  if not os.path.exists(path):
    raise ResultsError('%s: no %s (the attack did not finish; rerun test_adv.py '
                       '--mode=attack)' % (directory, SUMMARY))
  with open(path) as f:
    return json.load(f)


def round_index(summary, eps_round):
  """0-based round to read: the 1-based `eps_round` of a sweep, the only round otherwise."""
  return eps_round - 1 if summary['num_rounds'] > 1 else 0


def load_attack_round(directory, index):
  """The arrays of one eps round (0-based) of a result folder, checked for consistency.

  Returns:
    dict: summary, labels_true [N], *_nor [N] (logits_nor [N,64]), and the round's
    entropy_adv, confidence_adv, labels_adv, L2_distance [N], logits_adv [N,64].
  """
  summary = load_summary(directory)
  n, rounds = summary['num_examples'], summary['num_rounds']
  if not 0 <= index < rounds:
    raise ResultsError('%s: eps round %d does not exist (it has rounds 1..%d, eps %s)'
                       % (directory, index + 1, rounds, summary['eps']))
  out = {'summary': summary}
  for name in TEXT_FILES:
    path = os.path.join(directory, name)
    if not os.path.exists(path):
      raise ResultsError('%s: missing result file %s' % (directory, name))
    values = np.loadtxt(path, ndmin=2 if name.startswith('logits') else 1)
    expected = n * (rounds if name in ADV_FILES else 1)
    if len(values) != expected:
      raise ResultsError('%s: %s has %d rows, expected %d (N=%d, rounds=%d); the folder mixes '
                         'results of different runs' % (directory, name, len(values), expected,
                                                        n, rounds))
    if name in ADV_FILES:
      values = values[index * n:(index + 1) * n]
    out[name] = values.astype(np.int64) if name.startswith('labels') else values
  return out


def find_attacks(results_dir, dataset):
  """{attack: {'CE': dir, 'RCE': dir}} for every complete result folder of `dataset`."""
  if not os.path.isdir(results_dir):
    raise ResultsError('--results_dir=%s is not a folder' % results_dir)
  found = {}
  suffix = '_' + dataset
  for entry in sorted(os.listdir(results_dir)):
    if not entry.endswith(suffix) or entry.startswith('kernel_para'):
      continue
    for model in MODELS:
      directory = os.path.join(results_dir, entry, model)
      if os.path.isdir(directory) and is_complete(directory):
        summary = load_summary(directory)
        if summary.get('dataset', dataset) != dataset:
          raise ResultsError('%s holds %s results, not %s' % (directory, summary['dataset'],
                                                               dataset))
        found.setdefault(entry[:-len(suffix)], {})[model] = directory
  return found


def save_kernel_params(directory, rce, features, labels, params):
  """Training features/labels as text and the kernel parameters as a pickle-free npz."""
  name = model_name(rce)
  io_utils.makedirs(directory)
  io_utils.atomic_savetxt(os.path.join(directory, 'training_logits_' + name), features)
  io_utils.atomic_savetxt(os.path.join(directory, 'training_labels_' + name), labels, fmt='%d')
  io_utils.atomic_savez(os.path.join(directory, 'kernel_%s.npz' % name), **params)


def load_kernel_params(directory, rce, dataset):
  """The kernel parameters written by --mode=kernel_para, or a ResultsError saying how."""
  path = os.path.join(directory, 'kernel_%s.npz' % model_name(rce))
  if not os.path.exists(path):
    raise ResultsError(
        'missing kernel file %s; make it with: python test_adv.py --mode=kernel_para '
        '--dataset=%s --RCE_train=%s --log_root=... --train_data_path=...'
        % (path, dataset, rce))
  with np.load(path, allow_pickle=False) as data:
    return {k: data[k] for k in data.files}
