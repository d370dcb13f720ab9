"""Every script's bad command lines: one 'error:' line naming the problem, no traceback, a
non-zero exit, and no file created (issue "Results you can trust": strict command lines).

Each case runs in its own empty working directory; every path flag it could write to points
inside it, so "no file created" is: the directory is still empty afterwards (and the model
folders some cases read are unchanged).
"""
import os
import shutil

import pytest

from tests.helpers import REPO_ROOT, SHARED_TRAIN_STEPS, describe, run_parallel  # pylint: disable=g-bad-import-order
from rce.model import checkpoints  # pylint: disable=g-bad-import-order

# (script, flags, words the error must contain). {data} is the digits training file, {dir}
# a folder (not a data file), {file} a regular file (so no folder can be made under it),
# {empty} an empty file, {model} a trained ResNet-8 (CE), {cwd} the case's own working
# directory. {moved} is a copy of {model} whose state file still names the original's
# checkpoints by absolute path (TensorFlow's default, before train.py wrote relative ones);
# {fp32} is a copy of {model} (trained with --precision=fp32, recorded), {fp32_unrecorded}
# one without the record (older checkpoints).
TRAIN = ['train.py', '--train_data_path={data}', '--log_root={cwd}/model', '--dataset=mnist',
         '--num_residual_units=1']
TEST_NOR = ['test_nor.py', '--eval_data_path={data}', '--log_root={cwd}/model',
            '--dataset=mnist', '--num_residual_units=1', '--eval_once']
TEST_ADV = ['test_adv.py', '--eval_data_path={data}', '--log_root={cwd}/model',
            '--dataset=mnist', '--num_residual_units=1', '--mode=attack',
            '--results_dir={cwd}/results']
TEST_ADV_MODEL = ['test_adv.py', '--eval_data_path={data}', '--log_root={model}',
                  '--dataset=mnist', '--num_residual_units=1', '--mode=attack',
                  '--results_dir={cwd}/results']
# train.py resuming a copy of the shared model (its summaries into the case's folder)
RESUME = ['train.py', '--train_data_path={data}', '--train_dir={cwd}/train', '--dataset=mnist',
          '--num_residual_units=1', '--total_steps=%d' % (SHARED_TRAIN_STEPS + 5),
          '--test_every_steps=0']
MOVED = ['moved_model/checkpoint', 'outside --log_root', 'moved_model']
T_SNE = ['t_sne.py', '--dataset=mnist', '--results_dir={cwd}/results']
CONVERT = ['dataset_input.py', '--convert=digits', '--out_dir={cwd}/data']
REPRODUCE = ['reproduce.py', '--tiny', '--out_dir={cwd}/out']

CASES = {
    # misspelled and unknown flags, in every script
    'train_misspelled': (TRAIN + ['--total_step=5'], ['total_step', 'total_steps']),
    'train_misspelled_rce': (TRAIN + ['--RCE_trian=True'], ['RCE_trian', 'RCE_train']),
    'test_nor_misspelled': (TEST_NOR + ['--eval_batch_cout=5'], ['eval_batch_cout']),
    'test_adv_misspelled': (TEST_ADV + ['--attack_metod=bim'], ['attack_metod',
                                                                'attack_method']),
    't_sne_misspelled': (T_SNE + ['--attack_metod=fgsm'], ['attack_metod']),
    'convert_misspelled': (CONVERT + ['--out_dri=x'], ['out_dri']),
    'reproduce_misspelled': (REPRODUCE + ['--step=5'], ['--step']),
    'reproduce_unknown': (REPRODUCE + ['--bogus'], ['--bogus']),
    'train_stray_argument': (TRAIN + ['extra'], ['unexpected argument', 'extra']),
    # bad choices list the valid ones
    'train_dataset': (TRAIN[:3] + ['--dataset=svhn'], ['svhn', 'mnist', 'cifar10']),
    'test_adv_attack': (TEST_ADV + ['--attack_method=deepfool'], ['deepfool', 'fgsm',
                                                                  'carliniL2']),
    'convert_choice': (['dataset_input.py', '--convert=cifar', '--out_dir={cwd}/d'],
                       ['cifar', 'mnist_idx', 'digits']),
    'reproduce_dataset': (REPRODUCE + ['--dataset=svhn'], ['svhn', 'mnist', 'cifar10']),
    'test_nor_mode': (TEST_NOR + ['--mode=attack'], ['--mode=attack', 'eval']),
    # values out of range
    'train_total_steps_0': (TRAIN + ['--total_steps=0'], ['--total_steps=0']),
    'train_total_steps_negative': (TRAIN + ['--total_steps=-3'], ['--total_steps=-3']),
    'train_batch_size_0': (TRAIN + ['--batch_size=0'], ['--batch_size=0']),
    'train_batch_over_towers': (TRAIN + ['--num_gpus=3'], ['batch_size', 'num_gpus']),
    'train_lr_lengths': (TRAIN + ['--lr_boundaries=10', '--lr_values=0.1'],
                         ['lr_values', 'lr_boundaries']),
    'train_lr_order': (TRAIN + ['--lr_boundaries=20,10', '--lr_values=0.1,0.01,0.001'],
                       ['increasing']),
    'train_num_gpus_negative': (TRAIN + ['--num_gpus=-1'], ['--num_gpus=-1']),
    'test_nor_batch_count_0': (TEST_NOR + ['--eval_batch_count=0'], ['--eval_batch_count=0']),
    'test_adv_eps_negative': (TEST_ADV + ['--eps=-0.1'], ['--eps', '(0, 1]']),
    'test_adv_eps_above_1': (TEST_ADV + ['--eps=1.5'], ['--eps', '(0, 1]']),
    'test_adv_batch_count_0': (TEST_ADV + ['--eval_batch_count=0'], ['--eval_batch_count=0']),
    'test_adv_attack_batch_0': (TEST_ADV + ['--attack_batch_size=0'],
                                ['--attack_batch_size=0']),
    'test_adv_cw_lr_0': (TEST_ADV + ['--cw_learning_rate=0'], ['cw_learning_rate']),
    'test_adv_kernel_subset': (TEST_ADV + ['--kernel_per_class=5', '--kernel_subset=10'],
                               ['kernel_subset', 'kernel_per_class']),
    't_sne_max_points_0': (T_SNE + ['--tsne_max_points=0'], ['--tsne_max_points=0']),
    'test_adv_shard_index': (TEST_ADV + ['--num_shards=2', '--shard_index=2'],
                             ['shard_index', 'num_shards']),
    'test_adv_merge_one_shard': (TEST_ADV[:-2] + ['--mode=merge_shards',
                                                  '--results_dir={cwd}/results'],
                                 ['merge_shards', '--num_shards']),
    'reproduce_steps_negative': (REPRODUCE + ['--steps=-5'], ['--steps', '>= 0']),
    'reproduce_seeds_0': (REPRODUCE + ['--seeds=0'], ['--seeds', '>= 1']),
    'reproduce_seeds_negative': (REPRODUCE + ['--seeds=-1'], ['--seeds', 'must be >= 1']),
    'reproduce_jobs_0': (REPRODUCE + ['--jobs=0'], ['--jobs', 'must be >= 1']),
    'reproduce_jobs_negative': (REPRODUCE + ['--jobs=-2'], ['--jobs', 'must be >= 1']),
    'test_adv_more_shards_than_images': (
        TEST_ADV_MODEL + ['--num_shards=40', '--eval_batch_count=1', '--attack_batch_size=30'],
        ['--num_shards=40', '30 images']),
    'reproduce_precision': (REPRODUCE + ['--precision=fp8'], ['--precision', 'fp8',
                                                              'mixed_bfloat16']),
    'train_precision': (TRAIN + ['--precision=fp8'], ['precision', 'fp8', 'mixed_bfloat16']),
    # paths: empty where one is needed, a folder given as a data file
    'train_no_data_path': (['train.py', '--log_root={cwd}/model'], ['train_data_path']),
    'train_no_log_root': (['train.py', '--train_data_path={data}'], ['log_root']),
    'test_nor_no_log_root': (['test_nor.py', '--eval_data_path={data}', '--eval_once'],
                             ['log_root']),
    'test_nor_no_log_root_polling': (['test_nor.py', '--eval_data_path={data}'],
                                     ['log_root']),
    'test_adv_no_data_path': (['test_adv.py', '--mode=attack', '--log_root={cwd}/model'],
                              ['eval_data_path']),
    'train_directory_as_data': (['train.py', '--train_data_path={dir}',
                                 '--log_root={cwd}/model'], ['is a directory']),
    'train_empty_data_file': (['train.py', '--train_data_path={empty}',
                               '--log_root={cwd}/model'], ['empty.bin', 'is empty']),
    'test_adv_empty_data_file': (['test_adv.py', '--eval_data_path={empty}',
                                  '--log_root={model}', '--num_residual_units=1',
                                  '--results_dir={cwd}/results'], ['empty.bin', 'is empty']),
    # a resume with another --precision than the checkpoints were trained with
    'train_resume_other_precision': (
        RESUME + ['--log_root={fp32}', '--precision=mixed_float16'],
        ['--precision=fp32', '--precision=mixed_float16', 'train_lineage.json']),
    'train_resume_other_precision_unrecorded': (
        RESUME + ['--log_root={fp32_unrecorded}', '--precision=mixed_float16'],
        ['--precision', 'loss-scale']),
    # a model folder copied elsewhere whose state file names the original's checkpoints
    'test_nor_checkpoint_outside_log_root': (
        ['test_nor.py', '--eval_data_path={data}', '--log_root={moved}',
         '--eval_dir={cwd}/eval', '--num_residual_units=1', '--eval_once'], MOVED),
    'test_nor_polling_checkpoint_outside_log_root': (
        ['test_nor.py', '--eval_data_path={data}', '--log_root={moved}',
         '--eval_dir={cwd}/eval', '--num_residual_units=1'], MOVED),
    'train_resume_checkpoint_outside_log_root': (RESUME + ['--log_root={moved}'], MOVED),
    'test_adv_checkpoint_outside_log_root': (
        ['test_adv.py', '--eval_data_path={data}', '--log_root={moved}',
         '--num_residual_units=1', '--mode=attack', '--eval_batch_count=1',
         '--attack_batch_size=10', '--results_dir={cwd}/results'], MOVED),
    'kernel_para_checkpoint_outside_log_root': (
        ['test_adv.py', '--train_data_path={data}', '--log_root={moved}',
         '--num_residual_units=1', '--mode=kernel_para', '--eval_batch_count=1',
         '--results_dir={cwd}/results'], MOVED),
    # output folders that cannot be written: found before the work, one line naming them
    'train_log_root_unwritable': (TRAIN[:2] + ['--log_root={file}/model', '--dataset=mnist',
                                               '--num_residual_units=1'],
                                  ['--log_root', 'a_file/model']),
    'test_nor_eval_dir_unwritable': (['test_nor.py', '--eval_data_path={data}',
                                      '--log_root={model}', '--eval_dir={file}/eval',
                                      '--num_residual_units=1', '--eval_once'],
                                     ['--eval_dir', 'a_file/eval']),
    'test_adv_results_dir_unwritable': (['test_adv.py', '--eval_data_path={data}',
                                         '--log_root={model}', '--num_residual_units=1',
                                         '--mode=attack', '--results_dir={file}/results'],
                                        ['--results_dir', 'a_file/results']),
}


@pytest.fixture(scope='module')
def error_runs(tmp_path_factory, digits_train, shared_models):
  base = tmp_path_factory.mktemp('cli_errors')
  folder = base / 'a_folder'
  folder.mkdir()
  a_file = base / 'a_file'
  a_file.write_text('not a folder')
  empty = base / 'empty.bin'
  empty.write_bytes(b'')
  models = base / 'models'
  copies = {name: str(models / name) for name in ('fp32', 'fp32_unrecorded', 'moved_model')}
  for copy in copies.values():
    shutil.copytree(shared_models['CE'], copy)
  os.remove(os.path.join(copies['fp32_unrecorded'], checkpoints.LINEAGE_FILE))
  original = os.path.abspath(shared_models['CE'])
  with open(os.path.join(copies['moved_model'], checkpoints.STATE_FILE), 'w') as f:
    f.write('model_checkpoint_path: "%s/model.ckpt-%d"\n' % (original, SHARED_TRAIN_STEPS))
  before = {name: tree(copy) for name, copy in copies.items()}
  cwds, jobs = {}, []
  for name, (args, _) in CASES.items():
    cwd = base / name
    cwd.mkdir()
    cwds[name] = str(cwd)
    jobs.append([os.path.join(REPO_ROOT, args[0])]
                + [a.format(data=digits_train, dir=folder, file=a_file, empty=empty, cwd=cwd,
                            model=shared_models['CE'], fp32=copies['fp32'],
                            fp32_unrecorded=copies['fp32_unrecorded'],
                            moved=copies['moved_model']) for a in args[1:]])
  procs = run_parallel(jobs, timeout=300, cwds=[cwds[n] for n in CASES])
  for name, copy in copies.items():  # the refused model folders are left as they were
    assert tree(copy) == before[name], name
  return {name: (proc, cwds[name]) for name, proc in zip(CASES, procs)}


def tree(folder):
  """{relative path: size (None for a folder)} of everything below `folder`."""
  found = {}
  for root, dirs, files in os.walk(folder):
    for name in dirs + files:
      path = os.path.join(root, name)
      found[os.path.relpath(path, folder)] = None if name in dirs else os.path.getsize(path)
  return found


@pytest.mark.parametrize('case', sorted(CASES))
def test_bad_command_line_is_one_clear_error(error_runs, case):
  proc, cwd = error_runs[case]
  assert proc.returncode not in (0, None), describe(proc)
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1, describe(proc)
  for needle in CASES[case][1]:
    assert needle in errors[0], (needle, describe(proc))
  assert 'Traceback' not in proc.stderr + proc.stdout, describe(proc)
  assert os.listdir(cwd) == [], (os.listdir(cwd), describe(proc))


def test_a_forked_run_is_the_run_of_the_script(error_runs, digits_train, tmp_path):
  """The cases above run as forks of one process (tests/fork_runner.py): the same case as a
  real subprocess gives the same exit code and the same error line."""
  case = 'test_adv_misspelled'
  forked, _ = error_runs[case]
  cwd = tmp_path / 'real'
  cwd.mkdir()
  args = CASES[case][0]
  args = [os.path.join(REPO_ROOT, args[0])] + [a.format(data=digits_train, cwd=cwd)
                                               for a in args[1:]]
  real = run_parallel([args], cwds=[str(cwd)], fork=False)[0]
  assert real.returncode == forked.returncode != 0, (describe(real), describe(forked))
  error = lambda p: [line for line in p.stderr.splitlines() if line.startswith('error:')]
  assert error(real) == error(forked) and len(error(real)) == 1, (describe(real),
                                                                  describe(forked))
