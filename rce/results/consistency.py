"""Do these results belong together: the same model, the same data, the same flags.

Every reader that combines results asks here, from their summaries' provenance (made by
rce.results.provenance): C&W-wb and --mode=characteristics (the kernel and the attack
folders must be of the checkpoint they restore), --mode=merge_shards (each shard of the same
checkpoint, data and flags as the merge), --mode=detect (each attack folder of its kernel's
checkpoint, all on the same test data, both kernels on the same training data) and t_sne.py
(each panel its model's, both on the same test images). A model is the same when the
fingerprint of its variables is; data is the same when the files' sizes and SHA-256 are.
Each check raises errors.ResultsError naming the folders and files that do not fit.
"""
import collections

from rce.results import provenance
from rce.results import result_files
from rce.tables import errors

# The model a script restored, as its messages name it: the fingerprint of its variables,
# --log_root, and the checkpoint path and global step it restored.
Restored = collections.namedtuple('Restored', ['fingerprint', 'log_root', 'checkpoint',
                                               'step'])


def _made_by(summary):
  """The provenance model record of a summary (checkpoint, step, fingerprint, ...)."""
  return summary['provenance']['model']


def _checkpoint(made_by):
  return 'checkpoint %s (step %d)' % (made_by['checkpoint'], made_by['global_step'])


def _restored(model):
  return '--log_root=%s (%s, step %d)' % (model.log_root, model.checkpoint, model.step)


def _data(summary):
  return provenance.data_identity(summary['provenance']['data'])


def check_kernel_of(kernel_summary, kernel_dir, rce, model):
  """The kernel files in `kernel_dir` (CE or RCE: `rce`) must be of the restored `model`.

  C&W-wb attacks the K-density of this very checkpoint, and --mode=characteristics reads its
  Mahalanobis statistics.
  """
  made_by = _made_by(kernel_summary)
  if made_by['fingerprint'] != model.fingerprint:
    raise errors.ResultsError(
        '%s: %s was made from %s, not from the model of %s; rerun test_adv.py '
        '--mode=kernel_para for it' % (kernel_dir, result_files.kernel_summary_name(rce),
                                       _checkpoint(made_by), _restored(model)))


def check_attack_of(summary, directory, model, rerun='the attack'):
  """The attack folder `directory` (its `summary`) must be of the restored `model`; the
  message says to rerun `rerun`."""
  made_by = _made_by(summary)
  if made_by['fingerprint'] != model.fingerprint:
    raise errors.ResultsError('%s was made by %s, not by the model of %s; rerun %s'
                              % (directory, _checkpoint(made_by), _restored(model), rerun))


def check_shard(summary, directory, fingerprint, data, flags):
  """A shard folder must be of the merge's checkpoint, data and flags.

  Args:
    summary, directory: the shard's verified summary and its folder.
    fingerprint: the model fingerprint of the checkpoint in --log_root.
    data: provenance.data_identity of the merge's --eval_data_path.
    flags: {name: value} the shard must have been made with.
  """
  made = summary['provenance']
  if made['model']['fingerprint'] != fingerprint:
    raise errors.ResultsError('%s: made by %s, not by the model of --log_root; rerun the shard'
                              % (directory, _checkpoint(made['model'])))
  if provenance.data_identity(made['data']) != data:
    raise errors.ResultsError('%s: attacked other data than --eval_data_path' % directory)
  differ = sorted(k for k, v in flags.items() if made['flags'].get(k) != v)
  if differ:
    raise errors.ResultsError(
        '%s: made with other flags (%s) than this merge'
        % (directory, ', '.join('--%s=%s' % (k, made['flags'].get(k)) for k in differ)))


def check_table(summaries, kernel_summaries, kernel_dir):
  """The folders of one detect table must belong together.

  Every attack folder of model M must come from the checkpoint its kernel was made from,
  every attack folder must have attacked the same test data, and the CE and RCE kernels the
  same training data. The message names both folders and their files.

  Args:
    summaries: {attack: {model: (folder, its summary)}}.
    kernel_summaries: {model: the summary of its kernel files}.
    kernel_dir: the folder of the kernel files.
  """
  data_ref = None
  for attack in sorted(summaries):
    for model, (directory, summary) in sorted(summaries[attack].items()):
      if 'provenance' not in summary:
        result_files.verify_checksums(directory, summary)  # says: older version, rerun
      made_by, kernel_by = _made_by(summary), _made_by(kernel_summaries[model])
      if made_by['fingerprint'] != kernel_by['fingerprint']:
        raise errors.ResultsError(
            '%s: %s was made by %s, but %s: %s by %s; they are not the same %s model: rerun '
            'the stale one (attack or kernel_para)'
            % (directory, result_files.SUMMARY, _checkpoint(made_by), kernel_dir,
               result_files.kernel_summary_name(model == 'RCE'), _checkpoint(kernel_by),
               model))
      data = _data(summary)
      if data_ref is None:
        data_ref = (directory, data)
      elif data != data_ref[1]:
        raise errors.ResultsError(
            '%s: %s records other test data than %s (%s vs %s); one table compares '
            'attacks on the same images' % (
                directory, result_files.SUMMARY, data_ref[0],
                [d['path'] for d in summary['provenance']['data']], data_ref[0]))
  kernel_data = {m: _data(k) for m, k in kernel_summaries.items()}
  if len({repr(d) for d in kernel_data.values()}) > 1:
    raise errors.ResultsError(
        '%s: the CE and RCE kernels (%s) were made from different training data'
        % (kernel_dir, ', '.join(result_files.kernel_summary_name(m == 'RCE')
                                 for m in sorted(kernel_data))))


def check_panels(results):
  """t_sne.py's panels, [(model, folder, its summary)]: each folder must hold its model's
  results, and all must have attacked the same test images (where they record it)."""
  for model, directory, summary in results:
    if summary.get('model', model) != model:
      raise errors.ResultsError('%s holds results of the %s model, not %s'
                                % (directory, summary['model'], model))
  identities = {repr(_data(s)) for _, _, s in results if 'provenance' in s}
  if len(identities) > 1:
    raise errors.ResultsError('%s and %s attacked different test data; t-SNE compares the '
                              'same images' % (results[0][1], results[1][1]))
