"""Attack shards for a cluster: the I-th contiguous share of the images, and their merge.

`test_adv.py --mode=attack --num_shards=N --shard_index=I` attacks images
[I*n//N, (I+1)*n//N) of the n it would attack unsharded (C&W targets drawn for all n first,
so each image keeps its target) and writes an ordinary result folder under the attack folder
in `shards/I_of_N/`. `--mode=merge_shards` checks that all N shards are there, complete and
made by the same checkpoint, data and flags as the command asks for, and writes the ordinary
result folder: the same files as an unsharded run (every attack but `random` is per example;
the floats agree to rounding where the batches differ).
"""
import os

import numpy as np

from rce.attacking import attack_runner
from rce.results import consistency
from rce.results import result_files

# attack_stats of C&W-wb averaged over the examples Table 3 counts, not over all examples.
_TABLE3_MEANS = ('ratio_f2_positive', 'rms_distortion', 'mean_l2_distortion')


def share(n, index, count):
  """(start, end) of shard `index` of `count` over n images: contiguous, sizes differ by <= 1."""
  return index * n // count, (index + 1) * n // count


def check_count(n, count):
  """ValueError before any work unless each of `count` shards of n images gets one."""
  if count > n:
    raise ValueError('--num_shards=%d is more than the %d images to attack (--eval_batch_count '
                     'x --attack_batch_size, or the images the test files hold): every shard '
                     'needs at least one; use --num_shards <= %d' % (count, n, n))


def shard_dir(attack_dir, index, count):
  return os.path.join(attack_dir, 'shards', '%d_of_%d' % (index, count))


def _merge_stats(parts, where):
  """attack_stats of the whole from those of the shards [(num_examples, stats)]: rates as
  example-weighted means, Table 3 means weighted by the examples they count, the rest equal."""
  merged = {}
  for key, first in parts[0][1].items():
    values = [stats[key] for _, stats in parts]
    if key == 'table3_examples':
      merged[key] = int(sum(values))
    elif key in _TABLE3_MEANS:
      pairs = [(v, stats['table3_examples']) for v, (_, stats) in zip(values, parts)
               if v is not None]
      total = sum(w for _, w in pairs)
      merged[key] = sum(v * w for v, w in pairs) / total if total else None
    elif isinstance(first, float):
      merged[key] = sum(v * n for v, (n, _) in zip(values, parts)) / sum(n for n, _ in parts)
    elif any(v != first for v in values):
      raise result_files.ResultsError('%s: the shards disagree on %s (%s)'
                                      % (where, key, values))
    else:
      merged[key] = first
  return merged


def load_shards(attack_dir, count, fingerprint, data, flags):
  """The verified summaries of the `count` shards of `attack_dir`.

  Raises:
    ResultsError naming the shard folder: one is missing or incomplete, or was made by
    another checkpoint (model fingerprint), other data, or other flags than asked for now.
  """
  summaries = []
  for index in range(count):
    directory = shard_dir(attack_dir, index, count)
    if not os.path.isdir(directory):
      raise result_files.ResultsError(
          '%s: shard %d of %d is missing; run test_adv.py --mode=attack --num_shards=%d '
          '--shard_index=%d with the same flags' % (directory, index, count, count, index))
    summary = result_files.load_verified_summary(directory)
    consistency.check_shard(summary, directory, fingerprint, data, flags)
    made_index = summary['provenance']['flags'].get('shard_index')
    if made_index != index:
      raise result_files.ResultsError('%s: holds shard %s, not %d'
                                      % (directory, made_index, index))
    summaries.append((directory, summary))
  return summaries


def _text(directory, name):
  return np.loadtxt(os.path.join(directory, name),
                    ndmin=2 if name.startswith('logits') else 1)


def merge(attack_dir, summaries, provenance_record):
  """Writes the ordinary result folder `attack_dir` from the verified shard summaries.

  Returns the summary written.
  """
  rounds = summaries[0][1]['num_rounds']
  arrays = {}
  for name in result_files.REPEATED_FILES:  # round 1's rows: the fixed normal set
    arrays[name] = np.concatenate([_text(d, name)[:s['num_examples']] for d, s in summaries])
  for name in result_files.ADV_FILES:  # round-major: interleave the shards round by round
    parts = [_text(d, name) for d, _ in summaries]
    arrays[name] = np.concatenate([
        np.concatenate([p[r * s['num_examples']:(r + 1) * s['num_examples']]
                        for p, (_, s) in zip(parts, summaries)]) for r in range(rounds)])
  arrays['nor_img'] = np.concatenate([np.load(os.path.join(d, 'nor_img.npy'))
                                      for d, _ in summaries])
  arrays['adv_img'] = np.concatenate([np.load(os.path.join(d, 'adv_img.npy'))
                                      for d, _ in summaries], axis=1)
  for name in ('labels_true', 'labels_nor', 'labels_adv'):
    arrays[name] = arrays[name].astype(np.int64)
  n = len(arrays['labels_true'])
  first = summaries[0][1]
  eps_list = first['eps']
  per_round = []
  for r, eps in enumerate(eps_list):
    part = slice(r * n, (r + 1) * n)
    per_round.append(attack_runner.round_stats(
        arrays['labels_true'], arrays['labels_nor'], arrays['labels_adv'][part],
        arrays['confidence_adv'][part], arrays['entropy_adv'][part],
        arrays['L2_distance'][part], eps))
  stats = _merge_stats([(s['num_examples'], s['attack_stats']) for _, s in summaries],
                       attack_dir)
  summary = dict(first, num_examples=n, rounds=per_round, attack_stats=stats,
                 provenance=provenance_record,
                 merged_from=[result_files.run_id(s) for _, s in summaries])
  for key in ('files', 'shard'):
    summary.pop(key, None)
  return result_files.save_attack_results(attack_dir, arrays, summary)
