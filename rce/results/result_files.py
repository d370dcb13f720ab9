"""The on-disk formats of test_adv.py: attack results and kernel parameters.

Attack results, in `{attack}_{dataset}/{RCE|CE}/` (or --save_pwd), keep the original's file
names, text/npy formats and row layout, so that its Matlab scripts read them. N is the number
of attacked images, R the number of eps rounds (10 for the swept attacks, 1 for C&W):

  labels_true                 R*N      true labels (text)
  entropy_nor, confidence_nor R*N      non-ME and confidence of the normal images (text)
  logits_nor                  R*N x 64 features of the normal images (text; the original's name)
  labels_nor                  R*N      predicted labels of the normal images (text)
  entropy_adv, confidence_adv R*N      the same for the adversarial images (text)
  logits_adv                  R*N x 64
  labels_adv, L2_distance     R*N
  nor_img.npy                 [N, H, W, C] in [-0.5, 0.5]
  adv_img.npy                 [R, N, H, W, C] in [-0.5, 0.5]
  summary.json                eps per round, N, R, per-round statistics, the provenance
                              (model, data, flags, run id) and the SHA-256 of every file.

Every text file is round-major: rows r*N .. (r+1)*N-1 belong to eps round r (0-based), as in
the original's test_adv.py, which appended the normal and adversarial rows of each batch of
each round alike (`labels_true_all = np.concatenate((labels_true_all, ...))` inside its loop
over rounds), so each `*_nor` file and `labels_true` hold R*N rows. Its Matlab scripts rely on
that: `auc_of_roc_RCE.m` reads `reshape(load('labels_nor'), num_per_eps, [])` and takes column
`eps_round`, and picks `logits_nor` rows `(1+num_per_eps*(eps_round-1)):(num_per_eps*eps_round)`.

Unlike the original, which drew new test images in every round, one fixed image set is attacked
in every round: the rounds then differ only by eps, so a change across rounds is the attack's,
not the sample's. The normal images' rows (`*_nor`, `labels_true`) are therefore the same N
rows repeated once per round; `load_attack_round` refuses a folder whose rounds of them differ.
`nor_img.npy` keeps the N images once (the original saved R*N; no Matlab script reads it).

Kernel parameters, in `kernel_para_{dataset}/`: `training_logits_{M}` and
`training_labels_{M}` (text, M = RCE or CE), `kernel_{M}.npz` (no pickle) and their summary
`kernel_{M}.json`.

A folder is complete only while its summary is there and every file matches the checksum the
summary records: a writer removes the old summary first and writes the new one last, so an
interrupted rewrite leaves an incomplete folder, and a file changed or copied from another run
afterwards is named by the reader.
"""
import json
import os

import numpy as np

from rce.results import io_utils
from rce.tables import errors
from rce.tables import models

SUMMARY = 'summary.json'
CLEAN_RESULT = 'precision.json'  # test_nor.py's result, in --eval_dir
NOR_FILES = ('entropy_nor', 'confidence_nor', 'logits_nor', 'labels_nor')
ADV_FILES = ('entropy_adv', 'confidence_adv', 'logits_adv', 'labels_adv', 'L2_distance')
TEXT_FILES = NOR_FILES + ADV_FILES + ('labels_true',)
# The files of the fixed normal image set: given with N rows, written once per eps round.
REPEATED_FILES = NOR_FILES + ('labels_true',)
MODELS = models.MODELS
ResultsError = errors.ResultsError
model_name = models.model_name


def attack_dir(attack, dataset, rce, save_pwd=None, results_dir='.'):
  """`{results_dir}/{attack}_{dataset}/{RCE|CE}`, or --save_pwd when given."""
  if save_pwd:
    return save_pwd
  return os.path.join(results_dir, '%s_%s' % (attack, dataset), model_name(rce))


def kernel_dir(dataset, results_dir='.'):
  return os.path.join(results_dir, 'kernel_para_%s' % dataset)


def thresholds_dir(dataset, rce, results_dir='.'):
  """`{results_dir}/thresholds_{dataset}/{RCE|CE}`: the detectors' thresholds of a model
  (test_adv.py --mode=calibrate)."""
  return os.path.join(results_dir, 'thresholds_%s' % dataset, model_name(rce))


def adaptive_dir(run, dataset, rce, save_pwd=None, results_dir='.'):
  """`{results_dir}/adaptive_{dataset}/{run}/{RCE|CE}` (run: attack_names.adaptive_run), or
  --save_pwd when given."""
  if save_pwd:
    return save_pwd
  return os.path.join(results_dir, 'adaptive_%s' % dataset, run, model_name(rce))


# Folders under --results_dir that hold no Table 2 attack (find_attacks skips them).
NOT_ATTACK_FOLDERS = ('kernel_para_', 'thresholds_', 'adaptive_', 'detect_')


class FolderWriter(object):
  """Writes a result folder that counts as complete only once its summary lands.

  The old summary goes first, then each file is written atomically (its checksum kept), and
  `finish` writes the summary with every checksum and the run id last. Used as a context
  manager, a write that fails (a full disk) removes the files this writer wrote, so the
  incomplete folder holds nothing of the failed run.
  """

  def __init__(self, directory, summary_name=SUMMARY):
    self.directory, self.summary_name = directory, summary_name
    self.files = {}
    io_utils.makedirs(directory)
    self._remove(summary_name)

  def _remove(self, name):
    """Deletes `name` and the temporary files an interrupted write of it left behind."""
    path = os.path.join(self.directory, name)
    if os.path.exists(path):
      os.remove(path)
    io_utils.remove_stray_temp_files(self.directory, name)

  def __enter__(self):
    return self

  def __exit__(self, error_type, error, trace):
    if error_type is not None:
      self.abort()
    return False

  def write(self, name, writer, *args, **kwargs):
    """Writes file `name` with an io_utils atomic writer and records its checksum."""
    io_utils.remove_stray_temp_files(self.directory, name)
    self.files[name] = writer(os.path.join(self.directory, name), *args, **kwargs)

  def abort(self):
    """Removes the files written so far; the folder stays incomplete (no summary)."""
    for name in list(self.files) + [self.summary_name]:
      try:
        self._remove(name)
      except OSError:
        pass  # the error being raised is the one to report
    self.files = {}

  def finish(self, summary):
    """Writes the summary (with 'files': {name: sha256}) last; returns it."""
    summary = dict(summary, files=dict(self.files))
    io_utils.atomic_write_json(os.path.join(self.directory, self.summary_name), summary)
    return summary


# Table 6's runs keep the supervised detectors' characteristics of their images here.
SUPERVISED_FILE = 'supervised_characteristics.npz'


def save_attack_results(directory, arrays, summary, supervised=None):
  """Writes every result file atomically in the original's row layout, summary.json last.

  The text files are round-major with R*N rows, R = summary['num_rounds'] and
  N = summary['num_examples']: the N rows of the fixed normal image set (`*_nor`,
  `labels_true`) are written once per round, as the original's Matlab scripts expect.

  Args:
    directory: output folder (created).
    arrays: dict with the TEXT_FILES names plus 'nor_img' [N,...] and 'adv_img' [R,N,...];
      the REPEATED_FILES arrays have N rows, the ADV_FILES arrays R*N rows (round-major).
    summary: JSON-serializable dict with 'num_examples' and 'num_rounds' (eps list,
      statistics, provenance, ...).
    supervised: {name: array} written as SUPERVISED_FILE (npz, no pickle), or None.

  Returns:
    The summary as written, with the SHA-256 of every file.

  Raises:
    ValueError: an array does not have the rows N and R call for.
  """
  n, rounds = summary['num_examples'], summary['num_rounds']
  texts = {}
  for name in TEXT_FILES:
    values = np.asarray(arrays[name])
    given = n if name in REPEATED_FILES else rounds * n
    if len(values) != given:
      raise ValueError('%s has %d rows, expected %d (N=%d, rounds=%d)'
                       % (name, len(values), given, n, rounds))
    if name in REPEATED_FILES:
      values = np.concatenate([values] * rounds, axis=0)
    texts[name] = values
  with FolderWriter(directory) as folder:
    for name in TEXT_FILES:
      fmt = '%d' if name.startswith('labels') else '%.8e'
      folder.write(name, io_utils.atomic_savetxt, texts[name], fmt=fmt)
    folder.write('nor_img.npy', io_utils.atomic_save_npy, arrays['nor_img'])
    folder.write('adv_img.npy', io_utils.atomic_save_npy, arrays['adv_img'])
    if supervised:
      folder.write(SUPERVISED_FILE, io_utils.atomic_savez, **supervised)
    return folder.finish(summary)


def load_supervised_characteristics(directory, summary):
  """{key: array} of a run's SUPERVISED_FILE (its summary verified), None when it has none."""
  if SUPERVISED_FILE not in summary.get('files', {}):
    return None
  with np.load(os.path.join(directory, SUPERVISED_FILE), allow_pickle=False) as data:
    return {k: data[k] for k in data.files}


def is_complete(directory):
  return os.path.exists(os.path.join(directory, SUMMARY))


def load_summary(directory, summary_name=SUMMARY):
  """The summary of a result folder; ResultsError when it is missing or unreadable."""
  path = os.path.join(directory, summary_name)
  if not os.path.exists(path):
    raise ResultsError('%s: no %s: the folder is incomplete (its run did not finish or was '
                       'interrupted while rewriting it); rerun the command that makes it'
                       % (directory, summary_name))
  try:
    with open(path) as f:
      summary = json.load(f)
  except ValueError as e:
    raise ResultsError('%s: %s is not valid JSON (%s)' % (directory, summary_name, e))
  if not isinstance(summary, dict):
    raise ResultsError('%s: %s is not a summary object' % (directory, summary_name))
  return summary


def verify_checksums(directory, summary, summary_name=SUMMARY):
  """ResultsError unless every file `summary` lists is present with its recorded SHA-256."""
  files = summary.get('files')
  made = summary.get('provenance')
  if not isinstance(files, dict) or not isinstance(made, dict) or 'run_id' not in made:
    raise ResultsError('%s: %s records no provenance or file checksums (written by an older '
                       'version of the suite); rerun the command that makes it'
                       % (directory, summary_name))
  for name, digest in sorted(files.items()):
    path = os.path.join(directory, name)
    if not os.path.exists(path):
      raise ResultsError('%s: %s is missing (listed in %s)' % (directory, name, summary_name))
    if io_utils.sha256_file(path) != digest:
      raise ResultsError('%s: %s does not match its checksum in %s: it was changed, or copied '
                         'from another run, after this run (%s) wrote it; rerun the command '
                         'that makes the folder' % (directory, name, summary_name,
                                                    run_id(summary)))
  return summary


def load_verified_summary(directory, summary_name=SUMMARY):
  """The summary of a complete folder whose files all match their checksums."""
  return verify_checksums(directory, load_summary(directory, summary_name), summary_name)


def run_id(summary):
  return summary['provenance']['run_id']


def round_index(summary, eps_round):
  """0-based round to read: the 1-based `eps_round` of a sweep, the only round otherwise."""
  return eps_round - 1 if summary['num_rounds'] > 1 else 0


def load_attack_round(directory, index):
  """The arrays of one eps round (0-based) of a result folder, checked for consistency.

  Every text file must hold R*N rows, round-major (the original's layout); the rounds of the
  normal images' files (`*_nor`, `labels_true`) must be identical, the one fixed image set.

  Args:
    directory: a result folder written by `save_attack_results`.
    index: the 0-based eps round to read.

  Returns:
    dict: summary, labels_true [N], *_nor [N] (logits_nor [N,64]), and the round's
    entropy_adv, confidence_adv, labels_adv, L2_distance [N], logits_adv [N,64].

  Raises:
    ResultsError naming the folder and the file: incomplete folder, a file missing, of the
    wrong length, normal rows that differ between rounds, or a file not the one this run
    wrote (checksum).
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
    expected = n * rounds
    if len(values) != expected:
      hint = 'the folder mixes results of different runs'
      if name in REPEATED_FILES and rounds > 1 and len(values) == n:
        hint = ('its normal rows are written once, not once per eps round: an older version '
                'of the suite wrote it; rerun the attack')
      raise ResultsError('%s: %s has %d rows, expected %d (N=%d, rounds=%d); %s'
                         % (directory, name, len(values), expected, n, rounds, hint))
    if name in REPEATED_FILES:
      for r in range(1, rounds):
        if not np.array_equal(values[r * n:(r + 1) * n], values[:n]):
          raise ResultsError(
              '%s: %s: the rows of eps round %d differ from those of round 1; the normal '
              'images\' files must repeat one fixed image set in every round (rows %d..%d '
              'vs 1..%d)' % (directory, name, r + 1, r * n + 1, (r + 1) * n, n))
    out[name] = values[index * n:(index + 1) * n]
    if name.startswith('labels'):
      out[name] = out[name].astype(np.int64)
  verify_checksums(directory, summary)
  return out


def find_attacks(results_dir, dataset, models=MODELS):
  """{attack: {'CE': dir, 'RCE': dir}} for every result folder of `dataset` and `models`.

  A folder without its summary (an attack that was interrupted, or a rewrite that was) is a
  ResultsError, not skipped: a table silently missing a row would look complete. Folders of
  other models are not looked at (they may be being written meanwhile).
  """
  if not os.path.isdir(results_dir):
    raise ResultsError('--results_dir=%s is not a folder' % results_dir)
  found = {}
  suffix = '_' + dataset
  for entry in sorted(os.listdir(results_dir)):
    if not entry.endswith(suffix) or entry.startswith(NOT_ATTACK_FOLDERS):
      continue
    for model in models:
      directory = os.path.join(results_dir, entry, model)
      if not os.path.isdir(directory):
        continue
      summary = load_summary(directory)
      if summary.get('dataset', dataset) != dataset:
        raise ResultsError('%s holds %s results, not %s' % (directory, summary['dataset'],
                                                             dataset))
      if summary.get('model', model) != model:
        raise ResultsError('%s holds results of the %s model, not %s'
                           % (directory, summary['model'], model))
      found.setdefault(entry[:-len(suffix)], {})[model] = directory
  return found


def kernel_summary_name(rce):
  return 'kernel_%s.json' % model_name(rce)


def save_kernel_params(directory, rce, features, labels, params, summary=None):
  """Training features/labels as text, the kernel parameters as a pickle-free npz, and their
  summary `kernel_{M}.json` (provenance, checksums) last."""
  name = model_name(rce)
  with FolderWriter(directory, kernel_summary_name(rce)) as folder:
    folder.write('training_logits_' + name, io_utils.atomic_savetxt, features)
    folder.write('training_labels_' + name, io_utils.atomic_savetxt, labels, fmt='%d')
    folder.write('kernel_%s.npz' % name, io_utils.atomic_savez, **params)
    return folder.finish(dict(summary or {}, model=name))


def load_kernel_params(directory, rce, dataset):
  """(kernel parameters, their summary) written by --mode=kernel_para, checked against their
  checksums; a ResultsError saying how to make them when they are missing or incomplete."""
  name = kernel_summary_name(rce)
  if not os.path.exists(os.path.join(directory, name)):
    raise ResultsError(
        'missing kernel parameters %s (kernel_%s.npz and its summary %s); make them with: '
        'python test_adv.py --mode=kernel_para --dataset=%s --RCE_train=%s --log_root=... '
        '--train_data_path=...' % (directory, model_name(rce), name, dataset, rce))
  summary = load_verified_summary(directory, name)
  if summary.get('dataset') != dataset or summary.get('model') != model_name(rce):
    raise ResultsError('%s: %s holds the kernel of the %s model on %s, not %s on %s'
                       % (directory, name, summary.get('model'), summary.get('dataset'),
                          model_name(rce), dataset))
  with np.load(os.path.join(directory, 'kernel_%s.npz' % model_name(rce)),
               allow_pickle=False) as data:
    return {k: data[k] for k in data.files}, summary


THRESHOLDS_ARRAYS = 'calibration.npz'


def save_thresholds(directory, arrays, summary):
  """Writes a model's calibration (scores npz without pickle, then the summary with the
  thresholds) into thresholds_{dataset}/{RCE|CE}/."""
  with FolderWriter(directory) as folder:
    folder.write(THRESHOLDS_ARRAYS, io_utils.atomic_savez, **arrays)
    return folder.finish(summary)


def load_thresholds_arrays(directory):
  """{key: array} of a calibration's npz (its summary already verified)."""
  with np.load(os.path.join(directory, THRESHOLDS_ARRAYS), allow_pickle=False) as data:
    return {k: data[k] for k in data.files}


def load_thresholds_summary(directory, rce, dataset, kernel_summary):
  """The verified summary of a model's calibration, checked to be of `dataset`, the model
  and the kernel `kernel_summary`; a ResultsError saying how to make it otherwise."""
  command = ('python test_adv.py --mode=calibrate --dataset=%s --RCE_train=%s --log_root=... '
             '--eval_data_path=... (after --mode=kernel_para)' % (dataset, rce))
  if not os.path.exists(os.path.join(directory, SUMMARY)):
    raise ResultsError('missing detector thresholds %s (%s); make them with: %s'
                       % (directory, SUMMARY, command))
  summary = load_verified_summary(directory)
  if summary.get('dataset') != dataset or summary.get('model') != model_name(rce):
    raise ResultsError('%s holds the thresholds of the %s model on %s, not %s on %s'
                       % (directory, summary.get('model'), summary.get('dataset'),
                          model_name(rce), dataset))
  if summary.get('kernel_run_id') != run_id(kernel_summary):
    raise ResultsError('%s: the thresholds were calibrated with another kernel (run %s, now '
                       '%s); remake them with: %s' % (directory, summary.get('kernel_run_id'),
                                                      run_id(kernel_summary), command))
  return summary


CHARACTERISTICS_FOLDER = 'characteristics'
CHARACTERISTICS_ARRAYS = 'characteristics.npz'


def characteristics_dir(directory):
  """{attack folder}/characteristics/, written by test_adv.py --mode=characteristics."""
  return os.path.join(directory, CHARACTERISTICS_FOLDER)


def save_characteristics(directory, arrays, summary):
  """Writes an attack folder's characteristics/ (npz without pickle, then its summary)."""
  with FolderWriter(characteristics_dir(directory)) as folder:
    folder.write(CHARACTERISTICS_ARRAYS, io_utils.atomic_savez, **arrays)
    return folder.finish(summary)


def load_characteristics(directory, attack_summary, kernel_summary, command_hint):
  """(arrays, summary) of an attack folder's characteristics, verified against the attack
  run and the kernel they were computed from.

  Returns None when there are none; a ResultsError naming `command_hint` when they are
  incomplete or were computed from another run of the attack or another kernel.
  """
  folder = characteristics_dir(directory)
  if not os.path.exists(folder):
    return None
  summary = load_verified_summary(folder)
  for what, key, current in (('attack', 'attack_run_id', run_id(attack_summary)),
                             ('kernel (Mahalanobis statistics)', 'kernel_run_id',
                              run_id(kernel_summary))):
    if summary.get(key) != current:
      raise ResultsError(
          '%s: the characteristics were computed from another run of the %s (run %s, now %s);'
          ' remake them with: %s' % (folder, what, summary.get(key), current, command_hint))
  with np.load(os.path.join(folder, CHARACTERISTICS_ARRAYS), allow_pickle=False) as data:
    return {k: data[k] for k in data.files}, summary
