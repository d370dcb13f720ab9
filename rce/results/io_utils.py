"""Atomic file output: results are written to a temporary file and renamed into place.

A killed run never leaves a half-written result file behind; either the old file or the
complete new one is there. Each writer returns the SHA-256 of what it wrote, so a summary can
record the checksum of every file without reading it back.
"""
import glob
import hashlib
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


def sha256_bytes(data):
  return hashlib.sha256(data).hexdigest()


def sha256_file(path, chunk=1 << 22):
  """Hex SHA-256 of the file at `path`, read in chunks."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(chunk), b''):
      digest.update(block)
  return digest.hexdigest()


def remove_stray_temp_files(directory, name):
  """Deletes the temporary files a killed atomic write of `name` left in `directory`."""
  for path in glob.glob(os.path.join(glob.escape(directory), '.%s.*.tmp' % glob.escape(name))):
    os.remove(path)


def is_inside(path, folder):
  """Whether `path` is `folder` or lies below it, symbolic links resolved."""
  path, folder = os.path.realpath(path), os.path.realpath(folder)
  return os.path.commonpath([path, folder]) == folder


def os_error_text(e):
  """One line for an OSError: what failed, on which path."""
  paths = ' -> '.join(repr(p) for p in (e.filename, e.filename2) if p is not None)
  return '%s: %s' % (e.strerror or e, paths) if paths else str(e)


def check_writable_dir(path, what):
  """Creates `path` if needed and proves a file can be written there, before the work starts.

  Raises:
    ValueError naming `what` (e.g. '--results_dir') and the path, with the OS reason.
  """
  try:
    makedirs(path)
    fd, probe = tempfile.mkstemp(dir=path or '.', prefix='.write_check.', suffix='.tmp')
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise ValueError('cannot write to %s %r: %s' % (what, path, e.strerror or e))
  return path


def atomic_write_bytes(path, data):
  """Writes `data` (bytes) to `path` atomically, creating the parent directory.

  Returns the hex SHA-256 of `data`, the checksum result summaries record.

  Raises:
    OSError naming `path` (not the temporary file, which is removed), e.g. on a full disk.
  """
  directory = os.path.dirname(os.path.abspath(path))
  makedirs(directory)
  tmp = None
  try:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.',
                               suffix='.tmp')
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are ordinary files
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException as e:
    if tmp and os.path.exists(tmp):
      os.remove(tmp)
    if isinstance(e, OSError) and e.filename in (None, tmp):  # a write names no file
      raise OSError(e.errno, e.strerror or str(e), path) from e
    raise
  return sha256_bytes(data)


def atomic_write_text(path, text):
  """Writes the string `text` to `path` atomically (UTF-8); returns its SHA-256."""
  return atomic_write_bytes(path, text.encode('utf-8'))


def atomic_write_json(path, obj):
  """Writes `obj` as indented JSON to `path` atomically."""
  return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + '\n')


def atomic_save_npy(path, array):
  """`np.save` to `path` atomically (`path` is used as given, no `.npy` appended)."""
  buf = io.BytesIO()
  np.save(buf, np.asarray(array), allow_pickle=False)
  return atomic_write_bytes(path, buf.getvalue())


def atomic_savetxt(path, array, fmt='%.8e'):
  """`np.savetxt` to `path` atomically: the plain-text format the original's Matlab read."""
  buf = io.BytesIO()
  np.savetxt(buf, np.asarray(array), fmt=fmt)
  return atomic_write_bytes(path, buf.getvalue())


def atomic_savez(path, **arrays):
  """`np.savez` of named arrays to `path` atomically; loads without pickle."""
  buf = io.BytesIO()
  np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
  return atomic_write_bytes(path, buf.getvalue())
