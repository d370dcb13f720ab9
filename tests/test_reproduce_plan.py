"""reproduce.py's plan without running it: which stages each preset declares, with which flags,
and the data each preset accepts and describes (in-process, no stage runs)."""
import os

import numpy as np
import pytest

from rce.pipeline import paper
from rce.pipeline import results_md
from rce.tables import attack_names
import reproduce


def _driver(tmp_path, *argv):
  args = reproduce.parse_args(['--out_dir=%s' % (tmp_path / 'out'), '--num_gpus=0'] + list(argv))
  return reproduce.make_pipeline(args)


def _mnist_files(directory, train, test):
  """Tiny mnist-format files (float32 records: label, 784 pixels) of `train`/`test` images."""
  os.makedirs(directory, exist_ok=True)
  for name, n in (('data_train.bin', train), ('data_test.bin', test)):
    records = np.zeros((n, 785), '<f4')
    records[:, 0] = np.arange(n) % 10
    records.tofile(os.path.join(directory, name))
  return str(directory)


def test_full_plan_holds_both_cw_rows_uncapped(tmp_path):
  driver = _driver(tmp_path, '--full', '--data_dir=%s' % tmp_path)
  names = [s.name for s in driver.plan()]
  for model in ('CE', 'RCE'):
    assert 'attack_carliniL2_%s' % model in names  # the original code's settings
    assert 'attack_carliniL2_defaults_%s' % model in names  # Carlini's own defaults
  rep = driver.replicas[0]
  for attack in ('carliniL2', 'carliniL2_defaults'):
    flags = driver.attack_flags(attack, rep)
    assert not any(f.startswith(('--cw_max_iterations', '--cw_binary_search_steps'))
                   for f in flags), flags
  stage, = attack_names.info('carliniL2_defaults').cw_stages
  assert (stage.binary_search_steps, stage.max_iterations, stage.initial_const,
          stage.confidence, stage.learning_rate) == (9, 10000, 1e-3, 0.0, 0.01)
  assert "Carlini's defaults" in attack_names.title('carliniL2_defaults')


@pytest.mark.parametrize('preset', ['--tiny', '--small', None])
def test_short_presets_run_the_original_cw_only(tmp_path, preset):
  data = _mnist_files(tmp_path / 'data', 20, 10)
  argv = [preset] if preset else []
  if preset != '--tiny' and preset:
    argv.append('--data_dir=%s' % data)
  names = [s.name for s in _driver(tmp_path, *argv).plan()]
  assert 'attack_carliniL2_CE' in names
  assert not any('carliniL2_defaults' in n for n in names)


def test_small_preset_is_real_data_on_a_cpu(tmp_path):
  data = _mnist_files(tmp_path / 'data', 30, 12)
  driver = _driver(tmp_path, '--small', '--data_dir=%s' % data)
  driver.plan()
  p = driver.preset
  assert p['units'] == 2 and p['steps']['mnist'] == 3000 and p['eps_round'] == 8
  assert p['attack_batches'] * p['attack_batch_size'] == 1000
  assert 'data' not in [s.name for s in driver.stages]  # no digits conversion
  note = results_md.data_note(driver)
  assert '%s (30 images)' % os.path.join(data, 'data_train.bin') in note
  assert '%s (12 images)' % os.path.join(data, 'data_test.bin') in note
  assert 'digits' not in note
  flags = driver.attack_flags('carliniL2_highcon', driver.replicas[0])
  assert '--cw_max_iterations=100' in flags  # capped on a CPU


def test_digits_preset_refuses_other_data(tmp_path, capsys):
  for argv, named in ((['--data_dir=mnist_dataset'], '--data_dir=mnist_dataset'),
                      (['--dataset=cifar10', '--data_dir=x'], '--data_dir=x')):
    with pytest.raises(SystemExit) as raised:
      reproduce.parse_args(argv)
    message = str(raised.value.code)
    assert message.startswith('error: the digits preset') and named in message, message
    assert '--small' in message and '--full' in message


def test_digits_note_names_the_bundled_data(tmp_path):
  driver = _driver(tmp_path)
  driver.plan()
  driver.data_paths = {part: os.path.join(_mnist_files(tmp_path / 'out' / 'digits_dataset',
                                                       14, 7), name)
                       for part, name in (('train', 'data_train.bin'),
                                          ('test', 'data_test.bin'))}
  note = results_md.data_note(driver)
  assert '(14 images)' in note and '(7 images)' in note and 'bundled digits' in note
  for preset in paper.PRESETS.values():
    assert 'SPEC' not in preset['note']


def test_table6_stages_from_the_digits_preset_on_none_in_tiny(tmp_path):
  names = [s.name for s in _driver(tmp_path / 'tiny', '--tiny').plan()]
  assert not any(n.startswith(('calibrate', 'adaptive')) for n in names)
  driver = _driver(tmp_path / 'digits')
  stages = {s.name: s for s in driver.plan()}
  # untargeted: every detector of Table 6; targeted: the final-feature ones
  runs = [attack_names.adaptive_run(a, d, t) for t in (False, True)
          for a in attack_names.adaptive_attacks()
          for d in ((attack_names.ADAPTIVE_DETECTORS if t else attack_names.TABLE6_DETECTORS)
                    if attack_names.info(a).adaptive != 'oblivious' else (None,))]
  assert len(runs) == (3 + 3 * 7) + (3 + 3 * 3)
  assert not [n for n in stages if n.startswith('adaptive_') and 'supervised' in n
              and n.endswith('_targeted_CE')]
  for model in ('CE', 'RCE'):
    assert stages['calibrate_%s' % model].deps == ('kernel_para_%s' % model,
                                                   'characteristics_CE', 'characteristics_RCE')
    assert '--eps_round=1' in stages['calibrate_%s' % model].command()
    for run in runs:
      stage = stages['adaptive_%s_%s' % (run, model)]
      # every Table 6 attack takes the test rows after its model's calibration images
      assert stage.deps == ('train_%s' % model, 'calibrate_%s' % model)
      assert 'adaptive_%s_%s' % (run, model) in stages['detect'].deps
    command = stages['adaptive_pgd_orthogonal_lid_targeted_%s' % model].command()
    for flag in ('--attack_method=pgd_orthogonal', '--detector=lid', '--targeted=True',
                 '--pgd_steps=20', '--pgd_restarts=1', '--attack_batch_size=80'):
      assert flag in command, (flag, command)
    calibrate = stages['calibrate_%s' % model].command()
    # the thresholds come from the test images after every attacked one (200 of the preset)
    assert '--attack_batch_size=200' in calibrate and '--eval_batch_count=1' in calibrate
    assert '--calibration_images=79' in calibrate  # 200 + 79 + 80 = the 359 digits test images
    assert 'adaptive_pgd_lagrangian_ensemble_%s' % model in stages


def test_full_preset_runs_table6_with_1000_steps_and_10_restarts(tmp_path):
  driver = _driver(tmp_path, '--full', '--data_dir=%s' % tmp_path)
  stages = {s.name: s for s in driver.plan()}
  command = stages['adaptive_pgd_selective_k_density_RCE'].command()
  assert '--pgd_steps=1000' in command and '--pgd_restarts=10' in command
  assert '--attack_batch_size=1000' in command
