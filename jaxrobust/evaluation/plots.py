"""PNG plots for evaluation reports (matplotlib, Agg backend, no display needed).

Every function takes plain numbers / dicts / arrays and an output path, writes
one PNG (creating parent directories; local or ``gs://...``), closes the figure
and returns the path.
Errors and accuracies are expected as fractions in [0, 1]; the axes show
percent.
"""

from __future__ import annotations

import io
import os
from typing import Any, Mapping, Sequence, Union

import matplotlib

matplotlib.use('Agg')  # headless: reports are written on servers / TPU VMs
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxrobust import files  # noqa: E402

PathLike = Union[str, os.PathLike]


def _prepare(path: PathLike) -> str:
  path = os.fspath(path)
  if not path.lower().endswith('.png'):
    raise ValueError(f'path {path!r} invalid: plots are written as .png files')
  files.as_path(path).parent.mkdir(parents=True, exist_ok=True)
  return path


def _save(fig: Any, path: str) -> str:
  """Writes ``fig`` as a PNG to ``path``, local or a URI (``gs://...``)."""
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format='png', dpi=120)
  plt.close(fig)
  files.as_path(path).write_bytes(png.getvalue())
  return path


def _short(name: str) -> str:
  return str(name).replace('_', ' ')


def plot_corruption_errors(errors: Mapping[str, Any], path: PathLike, *,
                           title: str = 'Error per corruption',
                           ylabel: str = 'top-1 error (%)') -> str:
  """Bar chart of one number per corruption.

  Args:
    errors: ``corruption -> error`` for one model, or ``model -> {corruption ->
      error}`` for grouped bars (corruptions taken from the first model; every
      model must have them).
    path: output ``.png``.
    title, ylabel: labels (say "unnormalised" or "normalised" in the title).
  """
  path = _prepare(path)
  if not errors:
    raise ValueError('errors is empty: nothing to plot')
  grouped = all(isinstance(v, Mapping) for v in errors.values())
  series = dict(errors) if grouped else {'': dict(errors)}
  names = list(next(iter(series.values())))
  if not names:
    raise ValueError('no corruptions to plot')
  for model, vals in series.items():
    missing = [n for n in names if n not in vals]
    if missing:
      raise ValueError(f'model {model!r} lacks corruptions {missing}')
  fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(names) * max(1, len(series)) ** 0.5), 4.0))
  xs = np.arange(len(names))
  width = 0.8 / len(series)
  for i, (model, vals) in enumerate(series.items()):
    ax.bar(xs + (i - (len(series) - 1) / 2) * width, [100.0 * float(vals[n]) for n in names],
           width=width, label=model or None)
  ax.set_xticks(xs)
  ax.set_xticklabels([_short(n) for n in names], rotation=60, ha='right')
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  if grouped:
    ax.legend(fontsize=8)
  ax.grid(axis='y', alpha=0.3)
  return _save(fig, path)


def plot_error_vs_severity(errors: Mapping[str, Mapping[Any, float]], path: PathLike, *,
                           show_each: bool = True, show_mean: bool = True,
                           title: str = 'Error vs severity',
                           ylabel: str = 'top-1 error (%)') -> str:
  """Error vs severity: one line per corruption and/or their mean.

  Args:
    errors: ``corruption -> severity -> error`` (fractions). Severities may be
      ints or digit strings.
    path: output ``.png``.
    show_each: one thin line per corruption.
    show_mean: a thick line for the mean over corruptions at each severity
      (over the corruptions that have that severity).
  """
  path = _prepare(path)
  if not errors:
    raise ValueError('errors is empty: nothing to plot')
  if not (show_each or show_mean):
    raise ValueError('show_each and show_mean are both False: nothing to plot')
  table = {c: {int(s): float(e) for s, e in per.items()} for c, per in errors.items()}
  fig, ax = plt.subplots(figsize=(7.0, 4.5))
  if show_each:
    cmap = plt.get_cmap('tab20')
    for i, (c, per) in enumerate(table.items()):
      sevs = sorted(per)
      ax.plot(sevs, [100.0 * per[s] for s in sevs], marker='o', lw=1, ms=3,
              color=cmap(i % 20), label=_short(c))
  if show_mean:
    all_sevs = sorted({s for per in table.values() for s in per})
    means = [100.0 * np.mean([per[s] for per in table.values() if s in per]) for s in all_sevs]
    ax.plot(all_sevs, means, color='black', lw=3, marker='s', label='mean')
  ax.set_xlabel('severity')
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.set_xticks(sorted({s for per in table.values() for s in per}))
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, ncol=2, loc='upper left', bbox_to_anchor=(1.01, 1.0))
  return _save(fig, path)


def plot_frequency_heat_map(heat_map: Any, path: PathLike, *, title: str = 'Fourier heat map',
                            label: str = 'error', vmin: float | None = 0.0,
                            vmax: float | None = 1.0) -> str:
  """Heat map of an ``[H, W]`` array (fftshift-ed: DC at the centre). NaNs are blank.

  Args:
    heat_map: 2-D array of fractions (error or accuracy per frequency).
    path: output ``.png``.
    label: colour-bar label.
    vmin, vmax: colour range (None: data range).
  """
  path = _prepare(path)
  arr = np.asarray(heat_map, np.float64)
  if arr.ndim != 2 or arr.size == 0:
    raise ValueError(f'heat_map must be a non-empty 2-D array, got shape {arr.shape}')
  h, w = arr.shape
  fig, ax = plt.subplots(figsize=(4.8, 4.0))
  extent = (-(w // 2) - 0.5, w - w // 2 - 0.5, h - h // 2 - 0.5, -(h // 2) - 0.5)
  im = ax.imshow(arr, cmap='jet', vmin=vmin, vmax=vmax, extent=extent, interpolation='nearest')
  ax.set_xlabel('horizontal frequency')
  ax.set_ylabel('vertical frequency')
  ax.set_title(title)
  fig.colorbar(im, ax=ax, label=label)
  return _save(fig, path)


def plot_accuracy_vs_eps(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                         path: PathLike, *, xlabel: str = 'epsilon',
                         title: str = 'Robust accuracy vs epsilon',
                         ylabel: str = 'accuracy (%)', log_x: bool = False) -> str:
  """Accuracy vs perturbation size, one line per attack / model.

  Args:
    curves: ``label -> (eps values, accuracies)`` with accuracies as fractions.
    path: output ``.png``.
    xlabel: say the unit, e.g. ``'L-inf eps (x 1/255)'`` or ``'L2 eps'``.
    log_x: logarithmic x axis (useful for eps* curves).
  """
  path = _prepare(path)
  if not curves:
    raise ValueError('curves is empty: nothing to plot')
  fig, ax = plt.subplots(figsize=(6.0, 4.0))
  for name, (eps, acc) in curves.items():
    eps, acc = np.asarray(eps, np.float64), np.asarray(acc, np.float64)
    if eps.shape != acc.shape or eps.ndim != 1 or eps.size == 0:
      raise ValueError(
          f'curve {name!r}: eps {eps.shape} and accuracy {acc.shape} must be equal-length 1-D')
    order = np.argsort(eps)
    ax.plot(eps[order], 100.0 * acc[order], marker='o', ms=3, label=name)
  if log_x:
    ax.set_xscale('symlog', linthresh=1e-3)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_ylim(-2, 102)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, path)


def plot_boxplots(distributions: Mapping[str, Sequence[float]], path: PathLike, *,
                  title: str = '', ylabel: str = 'value') -> str:
  """Box plots of several distributions (e.g. EWS subnet confidences per model).

  Args:
    distributions: ``label -> values``; each must be non-empty. Non-finite values (e.g. the
      +inf epsilon* of never-flipped images) are left out of a box unless all are non-finite.
    path: output ``.png``.
  """
  path = _prepare(path)
  if not distributions:
    raise ValueError('distributions is empty: nothing to plot')
  labels, data = [], []
  for name, vals in distributions.items():
    arr = np.asarray(vals, np.float64).reshape(-1)
    if arr.size == 0:
      raise ValueError(f'distribution {name!r} is empty')
    labels.append(str(name))
    data.append(arr[np.isfinite(arr)] if np.isfinite(arr).any() else arr)
  fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(labels)), 4.0))
  ax.boxplot(data, showmeans=True)
  ax.set_xticks(np.arange(1, len(labels) + 1))
  ax.set_xticklabels(labels, rotation=30 if len(labels) > 4 else 0, ha='right' if len(labels) > 4 else 'center')
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title)
  ax.grid(axis='y', alpha=0.3)
  return _save(fig, path)
