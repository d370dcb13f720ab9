"""`python -m benchmarks.gpu_check --smoke` on the CPU: one table, a row per part, real numbers;
run as a file, it names the command instead."""
import re

from tests.helpers import describe, markdown_table, run_script  # pylint: disable=g-bad-import-order


def _numbers(text, unit):
  return [float(v) for v in re.findall(r'([0-9.]+) %s' % re.escape(unit), text)]


def test_smoke_run_on_the_cpu_reports_every_part(tmp_path, monkeypatch):
  monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '-1')  # the CPU even on a GPU machine
  out = tmp_path / 'gpu_check.md'
  proc = run_script(['-m', 'benchmarks.gpu_check', '--smoke', '--skip_reproduce',
                     '--out=%s' % out], timeout=300)
  assert proc.returncode == 0, describe(proc)
  text = out.read_text()
  assert text in proc.stdout  # the same table printed
  header, rows = markdown_table(text, '| check')
  assert header[1:] == ['result', 'figure / verdict'], header
  assert 'no GPU found' in header[0], header
  parts = {}
  for check, result, verdict in rows:
    parts.setdefault(check.split('.')[0], []).append((check, result, verdict))
  assert sorted(parts) == ['1', '2', '3', '4', '5'], [r[0] for r in rows]
  assert not any('FAILED' in ' '.join(r) for r in rows), text

  assert any('TensorFlow 2.' in result for _, result, _ in parts['1'])
  (_, towers, verdict), = parts['2']
  assert verdict.startswith('PASS'), (towers, verdict)
  assert 'CPU:0, CPU:1' in towers  # the two towers ran on two devices

  keras = parts['3'][0][1]
  precision = parts['4'][0][1]
  assert len(_numbers(keras, 'images/s')) == 2  # ours, Keras
  assert len(_numbers(precision, 'images/s')) == 2  # fp32, mixed_bfloat16
  assert all(v > 0 for v in _numbers(keras + precision, 'images/s'))
  attacks = [(check, result) for check, result, _ in parts['5']]
  assert [c for c, _ in attacks] == ['5. attack: FGSM', '5. attack: BIM', '5. attack: C&W']
  for _, result in attacks:
    rates = _numbers(result, 'adv/s')
    assert len(rates) == 2 and all(v > 0 for v in rates), result


def test_run_as_a_file_it_names_the_package_command():
  """The old `python benchmarks/gpu_check.py` stops at once with the command to use."""
  proc = run_script(['benchmarks/gpu_check.py', '--smoke'], timeout=60)
  assert proc.returncode == 1, describe(proc)
  assert 'python -m benchmarks.gpu_check' in proc.stderr, describe(proc)
