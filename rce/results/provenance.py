"""What produced a result: the model, the data files, the flags and a run id.

Every result summary (attack folders, kernel parameters, test_nor's precision, the detect
report) carries such a record, so a table can be traced to the checkpoint, data and flags
that made it, and a reader can refuse results that do not belong together.
"""
import os
import time
import uuid

from rce.results import io_utils


def new_run_id():
  """A unique id of one run of a script: time stamp plus random hex."""
  return '%s-%s' % (time.strftime('%Y%m%dT%H%M%S'), uuid.uuid4().hex[:8])


def data_record(files):
  """[{path, size, sha256}] of the data files a result was computed from, in their order."""
  return [{'path': os.path.abspath(p), 'size': os.path.getsize(p),
           'sha256': io_utils.sha256_file(p)} for p in files]


def data_identity(record):
  """The contents of a data record, whatever the files' paths: [(size, sha256), ...]."""
  return [(d['size'], d['sha256']) for d in record]


def model_record(info, model, hps):
  """The model a result came from: checkpoint, step, fingerprint, CE/RCE and shape."""
  return {'name': model, 'checkpoint': os.path.abspath(info.path), 'global_step': info.step,
          'fingerprint': info.fingerprint, 'num_residual_units': hps.num_residual_units,
          'use_bottleneck': hps.use_bottleneck}


def record(model, data, flags):
  """The provenance block of a summary: {'model', 'data', 'flags', 'run_id', 'created'}."""
  return {'model': model, 'data': data, 'flags': dict(flags), 'run_id': new_run_id(),
          'created': time.strftime('%Y-%m-%dT%H:%M:%S%z')}
