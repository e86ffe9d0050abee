"""Where a run's files live: local paths or URIs (``gs://bucket/run``), through ``etils.epath``.

Every file of a run (checkpoints, config, metrics, results, evaluation reports and plots) is
reached through :func:`as_path`, so a workdir on Cloud Storage is used as given.
"""

import os

from etils import epath


def as_path(path) -> epath.Path:
  """``path`` as a path object: a URI (``gs://bucket/run``) as it is, a local path absolute.

  ``os.path.abspath('gs://b/run')`` is ``<cwd>/gs:/b/run``: a run on a Cloud TPU VM would
  silently write to the VM's disk, lost with the VM, and each host of a pod to its own disk.
  Local paths are made absolute because orbax refuses relative ones.
  """
  path = os.fspath(path)
  if '://' in path:
    return epath.Path(path)
  return epath.Path(os.path.abspath(os.path.expanduser(path)))


def write_text_atomic(path, text: str) -> None:
  """Writes ``text`` to a sibling temporary file, then renames it over ``path``.

  A kill mid-write leaves the old file whole (a rename is atomic on a local file system, and an
  object is replaced whole on Cloud Storage): a truncated ``config.json`` would silently switch
  off the comparison with the config that wrote the checkpoints.
  """
  path = as_path(path)
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(text)
  tmp.replace(path)
