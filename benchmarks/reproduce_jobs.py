"""Wall time of reproduce.py at --jobs=1 and --jobs=2 (or more), side by side in one run.

Each setting runs the whole preset from scratch into its own fresh folder (data, training,
every attack, detection), one after the other on the same machine, and its stage times are
read back from stages.json. Tables 1-5 of the runs are compared: more jobs must change the
time, never the numbers (same seeds, same stages; only the scheduling differs).

    python -m benchmarks.reproduce_jobs                 # digits preset, --jobs=1 vs 2
    python -m benchmarks.reproduce_jobs --preset=tiny --jobs=1,2,4

Training is the same command in both settings; `--jobs=2` gains where independent stages
(CE and RCE trainings, the attacks of the two models) overlap on the cores.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TABLES = ('## Table 1', '## Table 2', '## Table 3', '## Tables 4 and 5')


def parse_args(argv=None):
  parser = argparse.ArgumentParser(prog='python -m benchmarks.reproduce_jobs',
                                   description=__doc__.splitlines()[0])
  parser.add_argument('--preset', default='digits', choices=['digits', 'tiny'])
  parser.add_argument('--jobs', default='1,2', help='comma-separated --jobs values to time')
  parser.add_argument('--work_dir', default='', help='where the runs go (default: a temp dir, '
                      'removed afterwards)')
  return parser.parse_args(argv)


def table_sections(text):
  """The Table 1-5 sections of a RESULTS.md, without the invocation's own wall time."""
  parts = re.split(r'^(## .*)$', text, flags=re.M)
  found = {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}
  return {head: body for head, body in found.items() if head.startswith(TABLES)}


def run(preset, jobs, out_dir):
  """Runs the preset at `jobs` into `out_dir`; returns (wall s, {stage: wall s}, tables)."""
  cmd = [sys.executable, os.path.join(ROOT, 'reproduce.py'), '--out_dir=%s' % out_dir,
         '--jobs=%d' % jobs] + (['--tiny'] if preset == 'tiny' else [])
  print('$ %s' % ' '.join(cmd), flush=True)
  start = time.perf_counter()
  proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                        text=True)
  wall = time.perf_counter() - start
  if proc.returncode:
    sys.exit('reproduce.py --jobs=%d failed (exit %d):\n%s' % (jobs, proc.returncode,
                                                               proc.stdout[-3000:]))
  with open(os.path.join(out_dir, 'stages.json')) as f:
    stages = {name: record['wall_s'] for name, record in json.load(f).items()}
  with open(os.path.join(out_dir, 'RESULTS.md')) as f:
    tables = table_sections(f.read())
  return wall, stages, tables


def main(argv=None):
  args = parse_args(argv)
  jobs_list = [int(j) for j in args.jobs.split(',')]
  work = args.work_dir or tempfile.mkdtemp(prefix='reproduce_jobs_')
  results = {}
  try:
    for jobs in jobs_list:
      out_dir = os.path.join(work, 'jobs_%d' % jobs)
      shutil.rmtree(out_dir, ignore_errors=True)
      results[jobs] = run(args.preset, jobs, out_dir)
  finally:
    if not args.work_dir:
      shutil.rmtree(work, ignore_errors=True)
  base_wall, base_stages, base_tables = results[jobs_list[0]]
  print('\nreproduce.py preset %s on %d CPU cores, from scratch, one run after the other:\n'
        % (args.preset, os.cpu_count() or 1))
  print('| --jobs | wall time (s) | sum of stage times (s) | speed-up vs --jobs=%d | '
        'Tables 1-5 identical |' % jobs_list[0])
  print('|---|---|---|---|---|')
  same = True
  for jobs in jobs_list:
    wall, stages, tables = results[jobs]
    identical = tables == base_tables
    same = same and identical
    print('| %d | %.0f | %.0f | %.2fx | %s |' % (jobs, wall, sum(stages.values()),
                                                 base_wall / wall, 'yes' if identical else 'NO'))
  print('\nThe sum of stage times grows with --jobs when stages share the cores; the wall '
        'time is what a user waits.')
  return 0 if same else 1


if __name__ == '__main__':
  sys.exit(main())
