"""Atomic file output: results are written to a temporary file and renamed into place.

A killed run never leaves a half-written result file behind; either the old file or the
complete new one is there.
"""
import io
import json
import os
import tempfile

import numpy as np


_UMASK = os.umask(0)
os.umask(_UMASK)


def makedirs(path):
  """Creates `path` (and parents) if missing; returns it."""
  if path:
    os.makedirs(path, exist_ok=True)
  return path


def atomic_write_bytes(path, data):
  """Writes `data` (bytes) to `path` atomically, creating the parent directory."""
  directory = os.path.dirname(os.path.abspath(path))
  makedirs(directory)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.',
                             suffix='.tmp')
  try:
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are ordinary files
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def atomic_write_text(path, text):
  """Writes the string `text` to `path` atomically (UTF-8)."""
  atomic_write_bytes(path, text.encode('utf-8'))


def atomic_write_json(path, obj):
  """Writes `obj` as indented JSON to `path` atomically."""
  atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + '\n')


def atomic_save_npy(path, array):
  """`np.save` to `path` atomically (`path` is used as given, no `.npy` appended)."""
  buf = io.BytesIO()
  np.save(buf, np.asarray(array), allow_pickle=False)
  atomic_write_bytes(path, buf.getvalue())


def atomic_savetxt(path, array, fmt='%.8e'):
  """`np.savetxt` to `path` atomically: the plain-text format the original's Matlab read."""
  buf = io.BytesIO()
  np.savetxt(buf, np.asarray(array), fmt=fmt)
  atomic_write_bytes(path, buf.getvalue())


def atomic_savez(path, **arrays):
  """`np.savez` of named arrays to `path` atomically; loads without pickle."""
  buf = io.BytesIO()
  np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
  atomic_write_bytes(path, buf.getvalue())
