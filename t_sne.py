"""t-SNE picture of the 64-d features: normal vs adversarial, CE and RCE side by side.

  python t_sne.py --dataset=mnist --attack_method=fgsm --results_dir=. --eps_round=1

reads {attack}_{dataset}/{CE,RCE}/ (whichever exist; or --ce_dir / --rce_dir) and writes
--tsne_out (default {results_dir}/detect_{dataset}/tsne_{attack}.png). Normal points are
coloured by their true class; adversarial points (the successful ones: normal correct,
adversarial wrong) by the class the model gives them, drawn as crosses.
"""
import os

from absl import logging
import numpy as np

from rce.detection import detection
from rce.flags import definitions
from rce.flags import strict
from rce.reports import report_render
from rce.results import consistency
from rce.results import io_utils
from rce.results import result_files

flags = definitions.flags
FLAGS = definitions.FLAGS


def define_flags():
  definitions.define_base_flags()
  definitions.define_attack_flags()
  flags.DEFINE_string('ce_dir', '', 'CE attack result folder (default: the standard layout).')
  flags.DEFINE_string('rce_dir', '', 'RCE attack result folder (default: the standard layout).')
  flags.DEFINE_string('tsne_out', '', 'Output PNG.')
  flags.DEFINE_integer('tsne_max_points', 500, 'At most this many normal (and adversarial) '
                       'points per panel.', lower_bound=1)


def panel(directory, title, eps_round, max_points, seed=0):
  """One panel dict for report_render.plot_tsne from an attack result folder."""
  summary = result_files.load_summary(directory)
  index = result_files.round_index(summary, eps_round)
  data = result_files.load_attack_round(directory, index)
  keep = detection.kept_mask(data['labels_true'], data['labels_nor'], data['labels_adv'])
  rng = np.random.RandomState(seed)
  nor = rng.permutation(len(keep))[:max_points]
  adv = rng.permutation(np.flatnonzero(keep))[:max_points]
  features = np.concatenate([data['logits_nor'][nor], data['logits_adv'][adv]])
  if len(features) < 2:
    raise result_files.ResultsError('%s: %d example(s) to embed; t-SNE needs at least 2'
                                    % (directory, len(features)))
  labels = np.concatenate([data['labels_true'][nor], data['labels_adv'][adv]])
  is_adv = np.concatenate([np.zeros(len(nor), bool), np.ones(len(adv), bool)])
  eps = summary['eps'][index]
  suffix = '' if eps is None else ', eps %g' % eps
  return {'title': '%s (%d normal, %d adversarial%s)' % (title, len(nor), len(adv), suffix),
          'embedding': report_render.tsne_embed(features, seed=seed), 'labels': labels,
          'is_adv': is_adv}


def write_tsne(dirs, attack, out, eps_round, max_points, seed=0):
  """The t-SNE panels of the attack folders `dirs` ({model: folder}; those that do not
  exist are left out), side by side in the PNG `out`, which it returns."""
  present = [(m, d) for m, d in sorted(dirs.items()) if os.path.isdir(d)]
  if not present:
    raise result_files.ResultsError('no attack results in %s; run test_adv.py --mode=attack '
                                    'first' % ' or '.join(dirs.values()))
  panels = [panel(d, '%s, %s' % (m, attack), eps_round, max_points, seed) for m, d in present]
  consistency.check_panels([(m, d, result_files.load_summary(d)) for m, d in present])
  io_utils.check_writable_dir(os.path.dirname(os.path.abspath(out)), '--tsne_out')
  report_render.plot_tsne(panels, out)
  logging.info('t-SNE of %s written to %s', ', '.join(m for m, _ in present), out)
  print('wrote %s' % out)
  return out


def main():
  dirs = {'CE': FLAGS.ce_dir or result_files.attack_dir(
              FLAGS.attack_method, FLAGS.dataset, False, results_dir=FLAGS.results_dir),
          'RCE': FLAGS.rce_dir or result_files.attack_dir(
              FLAGS.attack_method, FLAGS.dataset, True, results_dir=FLAGS.results_dir)}
  out = FLAGS.tsne_out or os.path.join(FLAGS.results_dir, 'detect_%s' % FLAGS.dataset,
                                       'tsne_%s.png' % FLAGS.attack_method)
  write_tsne(dirs, FLAGS.attack_method, out, FLAGS.eps_round, FLAGS.tsne_max_points,
             FLAGS.seed)


if __name__ == '__main__':
  strict.run_script(define_flags, main)
