"""Classification and corruption-robustness metrics.

Conventions (used by every function here):

* An *error table* is a mapping ``errors[corruption][severity] -> error`` with
  ``severity`` an int in 1..5 and ``error`` a **fraction in [0, 1]** (never a
  percentage). Anything outside [0, 1] raises ``ValueError``, which catches the
  usual "I passed percents" mistake.
* Every reported number says in its name whether it is normalised:
  ``unnormalized_*`` is a plain mean error; ``mce`` / ``normalized_ce`` divide by
  a baseline (AlexNet's published ImageNet-C errors, or a baseline run given as a
  JSON file for CIFAR, as in the Auxiliary Training paper's Eq. 8).
* mCE (Hendrycks & Dietterich, 2019) is the mean over the 15 *standard*
  corruptions of

      CE_c = (sum_s E_{c,s}) / (sum_s E^{base}_{c,s}),

  the four extra corruptions (speckle_noise, gaussian_blur, spatter, saturate)
  are reported separately and never enter the mCE.
* The "w/o noise" averages follow the noise-training paper (Rusak et al. 2020,
  Tables 1 and 3, "IN-C w/o noises"): the 15 standard corruptions minus
  gaussian_noise, shot_noise and impulse_noise, i.e. the 12 blur, weather and
  digital corruptions.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, Mapping, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

# ----------------------------------------------------------------------------
# Corruption names
# ----------------------------------------------------------------------------

#: The 15 corruptions of ImageNet-C / CIFAR-10-C that define mCE, in the
#: benchmark's order (noise, blur, weather, digital).
STANDARD_CORRUPTIONS: tuple[str, ...] = (
    'gaussian_noise', 'shot_noise', 'impulse_noise',
    'defocus_blur', 'glass_blur', 'motion_blur', 'zoom_blur',
    'snow', 'frost', 'fog', 'brightness',
    'contrast', 'elastic_transform', 'pixelate', 'jpeg_compression',
)

#: The 4 held-out corruptions released with the benchmark (not part of mCE).
EXTRA_CORRUPTIONS: tuple[str, ...] = (
    'speckle_noise', 'gaussian_blur', 'spatter', 'saturate',
)

ALL_CORRUPTIONS: tuple[str, ...] = STANDARD_CORRUPTIONS + EXTRA_CORRUPTIONS

#: The "noise" category excluded by the noise-training paper's w/o-noise numbers.
NOISE_CORRUPTIONS: tuple[str, ...] = ('gaussian_noise', 'shot_noise', 'impulse_noise')

#: The 12 standard corruptions that remain once the noise category is removed.
STANDARD_CORRUPTIONS_WITHOUT_NOISE: tuple[str, ...] = tuple(
    c for c in STANDARD_CORRUPTIONS if c not in NOISE_CORRUPTIONS)

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

# ----------------------------------------------------------------------------
# Published AlexNet ImageNet-C errors
# ----------------------------------------------------------------------------

#: AlexNet (torchvision weights) top-1 error on ImageNet-C per corruption and
#: severity 1..5, as **fractions**. Source: the AlexNet evaluation of
#: github.com/hendrycks/robustness (ImageNet-C), as redistributed e.g. in timm's
#: ImageNet-C utilities. Only the 15 standard corruptions are published per
#: severity.
ALEXNET_ERRORS_PER_SEVERITY: dict[str, tuple[float, ...]] = {
    'gaussian_noise': (0.69528, 0.82542, 0.93554, 0.98138, 0.99452),
    'shot_noise': (0.71224, 0.85108, 0.93574, 0.98182, 0.99146),
    'impulse_noise': (0.78374, 0.89808, 0.94870, 0.98720, 0.99548),
    'defocus_blur': (0.65624, 0.73202, 0.85036, 0.91364, 0.94714),
    'glass_blur': (0.64308, 0.75054, 0.88806, 0.91622, 0.93344),
    'motion_blur': (0.58430, 0.70048, 0.82108, 0.89750, 0.92638),
    'zoom_blur': (0.70008, 0.76992, 0.80784, 0.84198, 0.87198),
    'snow': (0.71726, 0.88392, 0.86468, 0.91870, 0.94952),
    'frost': (0.61390, 0.79734, 0.88790, 0.89942, 0.93430),
    'fog': (0.67474, 0.76050, 0.84378, 0.87260, 0.94500),
    'brightness': (0.45140, 0.48502, 0.54048, 0.62166, 0.72440),
    'contrast': (0.64548, 0.76150, 0.88874, 0.97760, 0.99270),
    'elastic_transform': (0.52596, 0.70116, 0.55686, 0.64076, 0.80554),
    'pixelate': (0.52218, 0.54620, 0.73728, 0.87092, 0.91262),
    'jpeg_compression': (0.51002, 0.54718, 0.57294, 0.65458, 0.74778),
}

#: AlexNet top-1 error on ImageNet-C per corruption, **averaged over the five
#: severities**, as **fractions** (multiply by 100 for the percents printed in
#: Hendrycks & Dietterich 2019). The 15 standard values are the means of
#: ``ALEXNET_ERRORS_PER_SEVERITY`` (the ``ALEXNET_ERR`` constants used by the
#: AugMix and game-of-noise ImageNet-C evaluations); the 4 extra corruptions'
#: averages are the values published alongside them (only averages exist).
ALEXNET_ERRORS: dict[str, float] = {
    'gaussian_noise': 0.886428,
    'shot_noise': 0.894468,
    'impulse_noise': 0.922640,
    'defocus_blur': 0.819880,
    'glass_blur': 0.826268,
    'motion_blur': 0.785948,
    'zoom_blur': 0.798360,
    'snow': 0.866816,
    'frost': 0.826572,
    'fog': 0.819324,
    'brightness': 0.564592,
    'contrast': 0.853204,
    'elastic_transform': 0.646056,
    'pixelate': 0.717840,
    'jpeg_compression': 0.606500,
    'speckle_noise': 0.845388,
    'gaussian_blur': 0.787108,
    'spatter': 0.717512,
    'saturate': 0.658248,
}

#: AlexNet (torchvision weights) clean ImageNet top-1 error, as a fraction
#: (torchvision reports Acc@1 = 56.522). Needed for the relative mCE.
ALEXNET_CLEAN_ERROR: float = 0.43478

# A baseline is either the name 'alexnet', a path to a JSON file, an error
# table (corruption -> severity -> error) or per-corruption averages
# (corruption -> error averaged over severities 1..5).
Baseline = Union[str, os.PathLike, Mapping[str, Any]]

# ----------------------------------------------------------------------------
# Per-example metrics (jittable)
# ----------------------------------------------------------------------------


def topk_correct(logits: jax.Array, labels: jax.Array,
                 ks: Sequence[int] = (1, 5)) -> dict[int, jax.Array]:
  """Whether the label is among the k highest logits, per example.

  Uses ``lax.top_k`` (as torch's ``topk``-based accuracy in the reference
  evaluations), so on exact ties the lower class index ranks first, the same
  tie-break as ``argmax`` for k = 1. Jittable.

  Args:
    logits: [B, num_classes] scores.
    labels: [B] integer class ids.
    ks: the k values; each must be in 1..num_classes.

  Returns:
    ``{k: bool[B]}``, True where ``labels`` is within the top k.
  """
  if logits.ndim != 2:
    raise ValueError(f'logits must be [batch, classes], got shape {logits.shape}')
  num_classes = logits.shape[-1]
  ks = tuple(int(k) for k in ks)
  if not ks:
    raise ValueError('ks must contain at least one k')
  bad = [k for k in ks if not 1 <= k <= num_classes]
  if bad:
    raise ValueError(f'k={bad} invalid: allowed 1..{num_classes} (number of classes)')
  _, top_idx = jax.lax.top_k(logits, max(ks))
  hits = top_idx == labels[:, None].astype(top_idx.dtype)
  return {k: jnp.any(hits[:, :k], axis=-1) for k in ks}


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy ``-log softmax(logits)[label]``. Jittable.

  Args:
    logits: [B, num_classes].
    labels: [B] integer class ids.

  Returns:
    [B] float losses (natural log).
  """
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


# ----------------------------------------------------------------------------
# Error table bookkeeping (host side)
# ----------------------------------------------------------------------------


def _check_severity(severity: Any) -> int:
  if isinstance(severity, str) and severity.strip().isdigit():
    severity = int(severity)
  if isinstance(severity, (bool, np.bool_)) or not isinstance(severity, (int, np.integer)):
    raise ValueError(f'severity {severity!r} invalid: allowed {SEVERITIES}')
  severity = int(severity)
  if severity not in SEVERITIES:
    raise ValueError(f'severity {severity} invalid: allowed {SEVERITIES}')
  return severity


def _check_error(value: Any, where: str) -> float:
  value = float(value)
  if not math.isfinite(value) or not 0.0 <= value <= 1.0:
    raise ValueError(
        f'{where}: error {value} invalid: errors are fractions in [0, 1] '
        '(divide percents by 100)')
  return value


def validate_error_table(errors: Mapping[str, Mapping[Any, Any]]
                         ) -> dict[str, dict[int, float]]:
  """Checks an error table and returns a clean copy with int severities.

  Corruption names are not restricted (tables may hold e.g. 'rotation', used by
  Auxiliary Training); the mCE functions check for the corruptions they need.

  Args:
    errors: corruption -> severity -> error fraction. Severities may be ints
      or digit strings (as read back from JSON).

  Returns:
    ``dict[str, dict[int, float]]``.
  """
  if not isinstance(errors, Mapping) or not errors:
    raise ValueError('errors must be a non-empty mapping corruption -> severity -> error')
  out: dict[str, dict[int, float]] = {}
  for name, per_sev in errors.items():
    if not isinstance(per_sev, Mapping) or not per_sev:
      raise ValueError(
          f'errors[{name!r}] must be a non-empty mapping severity -> error, got {per_sev!r}')
    out[str(name)] = {
        _check_severity(s): _check_error(e, f'errors[{name!r}][{s!r}]')
        for s, e in per_sev.items()}
  return out


class ErrorCounter:
  """Accumulates correct/total counts per (corruption, severity) over batches.

  A host-side helper for evaluation loops: call :meth:`add` with the per-example
  correctness of each batch (e.g. ``topk_correct(...)[1]``), then
  :meth:`errors` gives the error table. Counts, not per-batch means, are summed,
  so uneven last batches are weighted correctly.
  """

  def __init__(self):
    self._correct: dict[str, dict[int, int]] = {}
    self._total: dict[str, dict[int, int]] = {}

  def add(self, corruption: str, severity: int, correct: Any) -> None:
    """Adds a batch. ``correct`` is a bool/0-1 array of any shape."""
    severity = _check_severity(severity)
    correct = np.asarray(correct)
    if correct.size == 0:
      return
    self._correct.setdefault(corruption, {}).setdefault(severity, 0)
    self._total.setdefault(corruption, {}).setdefault(severity, 0)
    self._correct[corruption][severity] += int(np.sum(correct.astype(bool)))
    self._total[corruption][severity] += int(correct.size)

  def counts(self) -> dict[str, dict[int, tuple[int, int]]]:
    """``corruption -> severity -> (num_correct, num_total)``."""
    return {c: {s: (self._correct[c][s], self._total[c][s]) for s in sorted(per)}
            for c, per in self._total.items()}

  def errors(self) -> dict[str, dict[int, float]]:
    """The error table ``corruption -> severity -> 1 - correct/total``."""
    if not self._total:
      raise ValueError('ErrorCounter is empty: add() at least one batch first')
    return {c: {s: 1.0 - self._correct[c][s] / self._total[c][s] for s in sorted(per)}
            for c, per in self._total.items()}


# ----------------------------------------------------------------------------
# Baselines
# ----------------------------------------------------------------------------


def load_baseline_errors(path: Union[str, os.PathLike]) -> dict[str, Any]:
  """Reads a baseline run's errors from JSON.

  Accepted layouts (errors as fractions in [0, 1]):

  * ``{"errors": {corruption: {severity: err}}, "clean_error": 0.05}``
    (``clean_error`` optional; needed only for the relative mCE);
  * a bare table ``{corruption: {severity: err}}``;
  * per-corruption averages ``{corruption: err}`` (averaged over severities 1..5).

  Args:
    path: JSON file.

  Returns:
    ``{'errors': table-or-averages, 'clean_error': float | None}``.
  """
  try:
    with open(path) as f:
      data = json.load(f)
  except OSError as e:
    raise ValueError(f'cannot read baseline errors file {path!r}: {e}') from e
  except json.JSONDecodeError as e:
    raise ValueError(f'baseline errors file {path!r} is not valid JSON: {e}') from e
  if not isinstance(data, dict):
    raise ValueError(f'baseline errors file {path!r} must hold a JSON object')
  clean = None
  if 'errors' in data:
    clean = data.get('clean_error')
    data = data['errors']
  if clean is not None:
    clean = _check_error(clean, f'{path}: clean_error')
  return {'errors': _normalise_baseline(data, source=str(path)), 'clean_error': clean}


def _normalise_baseline(baseline: Mapping[str, Any], source: str) -> dict[str, Any]:
  """Validates a baseline: values are floats (averages) or severity tables."""
  if not isinstance(baseline, Mapping) or not baseline:
    raise ValueError(f'baseline {source}: must be a non-empty mapping')
  out: dict[str, Any] = {}
  for name, value in baseline.items():
    if isinstance(value, Mapping):
      out[str(name)] = validate_error_table({name: value})[str(name)]
    else:
      out[str(name)] = _check_error(value, f'baseline {source}[{name!r}]')
  return out


def resolve_baseline(baseline: Baseline) -> dict[str, Any]:
  """Turns a baseline spec into ``corruption -> float | {severity: float}``.

  Args:
    baseline: ``'alexnet'`` (the published ImageNet-C AlexNet errors: per
      severity for the 15 standard corruptions, so that a model evaluated on
      some severities is normalised by AlexNet's errors at the same ones; the
      averages for the 4 extra), a path to a JSON file (see
      :func:`load_baseline_errors`), or a mapping.
  """
  if isinstance(baseline, str) and baseline.lower() == 'alexnet':
    return {**ALEXNET_ERRORS, **{c: dict(zip(SEVERITIES, per))
                                 for c, per in ALEXNET_ERRORS_PER_SEVERITY.items()}}
  if isinstance(baseline, (str, os.PathLike)):
    if not os.path.exists(baseline):
      raise ValueError(
          f'baseline {baseline!r} invalid: allowed "alexnet", an existing JSON file, or a mapping')
    return load_baseline_errors(baseline)['errors']
  if isinstance(baseline, Mapping):
    return _normalise_baseline(baseline, source='mapping')
  raise ValueError(
      f'baseline {baseline!r} invalid: allowed "alexnet", a JSON file path, or a mapping')


# ----------------------------------------------------------------------------
# Unnormalised aggregates
# ----------------------------------------------------------------------------


def _require(table: Mapping[str, Any], corruptions: Iterable[str], what: str) -> None:
  missing = [c for c in corruptions if c not in table]
  if missing:
    raise ValueError(
        f'{what} lacks corruption(s) {missing}; it has {sorted(table)}')


def _mean_over_severities(per_sev: Mapping[int, float],
                          severities: Sequence[int] | None, where: str) -> float:
  sevs = sorted(per_sev) if severities is None else [_check_severity(s) for s in severities]
  missing = [s for s in sevs if s not in per_sev]
  if missing:
    raise ValueError(f'{where} lacks severities {missing}; it has {sorted(per_sev)}')
  if not sevs:
    raise ValueError(f'{where}: no severities to average')
  return float(np.mean([per_sev[s] for s in sevs]))


def corruption_errors(errors: Mapping[str, Mapping[Any, float]],
                      corruptions: Sequence[str] | None = None,
                      severities: Sequence[int] | None = None) -> dict[str, float]:
  """Unnormalised corruption error per corruption: ``mean_s E_{c,s}``.

  Args:
    errors: error table (fractions).
    corruptions: which corruptions (default: every one in the table).
    severities: which severities (default: all present for each corruption).

  Returns:
    ``corruption -> unnormalised mean error over severities``.
  """
  table = validate_error_table(errors)
  names = list(table) if corruptions is None else list(corruptions)
  _require(table, names, 'errors')
  return {c: _mean_over_severities(table[c], severities, f'errors[{c!r}]') for c in names}


def unnormalized_mce(errors: Mapping[str, Mapping[Any, float]],
                     corruptions: Sequence[str] = STANDARD_CORRUPTIONS,
                     severities: Sequence[int] | None = None) -> float:
  """Mean corruption error, **not** normalised by any baseline.

  ``mean_c mean_s E_{c,s}`` over ``corruptions`` (default: the 15 standard).
  This is what many CIFAR papers call "mCE"; say "unnormalised" when you report
  it.
  """
  ce = corruption_errors(errors, corruptions, severities)
  return float(np.mean(list(ce.values())))


def mean_accuracy(errors: Mapping[str, Mapping[Any, float]],
                  corruptions: Sequence[str] = STANDARD_CORRUPTIONS,
                  severities: Sequence[int] | None = None) -> float:
  """Mean accuracy over corruption x severity cells, ``1 - unnormalized_mce``.

  With an equal number of images per cell (as in the -C benchmarks) this equals
  the pooled accuracy the noise-training paper reports as "IN-C Top-1".
  """
  return 1.0 - unnormalized_mce(errors, corruptions, severities)


def mean_accuracy_at_severity(errors: Mapping[str, Mapping[Any, float]], severity: int,
                              corruptions: Sequence[str] = STANDARD_CORRUPTIONS) -> float:
  """Mean accuracy over ``corruptions`` at a single ``severity``."""
  return mean_accuracy(errors, corruptions, severities=[_check_severity(severity)])


def mean_accuracy_without_noise(errors: Mapping[str, Mapping[Any, float]],
                                severities: Sequence[int] | None = None) -> float:
  """Mean accuracy over the 12 standard non-noise corruptions ("w/o noises").

  As the noise-training paper's "IN-C w/o noises" columns: gaussian, shot and
  impulse noise are excluded, blur/weather/digital remain.
  """
  return mean_accuracy(errors, STANDARD_CORRUPTIONS_WITHOUT_NOISE, severities)


def unnormalized_mce_without_noise(errors: Mapping[str, Mapping[Any, float]],
                                   severities: Sequence[int] | None = None) -> float:
  """Unnormalised mean corruption error over the 12 non-noise standard corruptions."""
  return unnormalized_mce(errors, STANDARD_CORRUPTIONS_WITHOUT_NOISE, severities)


# ----------------------------------------------------------------------------
# Normalised: CE, mCE, relative mCE
# ----------------------------------------------------------------------------


def _paired_means(model_sev: Mapping[int, float], base: Any, name: str
                  ) -> tuple[float, float]:
  """(mean_s E_{c,s}, mean_s E^base_{c,s}) over the same severities.

  sum_s E / sum_s E^base == mean_s E / mean_s E^base when both range over the
  same severities, so means are used throughout. A baseline given as an
  average over severities 1..5 (e.g. AlexNet) is only comparable with a model
  evaluated on all five.
  """
  sevs = sorted(model_sev)
  if isinstance(base, Mapping):
    missing = [s for s in sevs if s not in base]
    if missing:
      raise ValueError(
          f'baseline[{name!r}] lacks severities {missing} that the model was evaluated on; '
          f'it has {sorted(base)}')
    base_mean = float(np.mean([base[s] for s in sevs]))
  else:
    if sevs != list(SEVERITIES):
      raise ValueError(
          f'errors[{name!r}] has severities {sevs}, but the baseline gives only an average '
          f'over severities {list(SEVERITIES)}: evaluate all five severities')
    base_mean = float(base)
  return float(np.mean([model_sev[s] for s in sevs])), base_mean


def normalized_ce(errors: Mapping[str, Mapping[Any, float]], baseline: Baseline = 'alexnet',
                  corruptions: Sequence[str] = STANDARD_CORRUPTIONS) -> dict[str, float]:
  """Normalised corruption error per corruption (Hendrycks & Dietterich; AuxTrain Eq. 8).

  ``CE_c = sum_s E_{c,s} / sum_s E^{base}_{c,s}`` (a ratio, 1.0 = as bad as the
  baseline; multiply by 100 for the percents in the papers).

  Args:
    errors: the model's error table.
    baseline: ``'alexnet'``, a JSON path or a mapping (see
      :func:`resolve_baseline`).
    corruptions: which corruptions (default: the 15 standard).

  Returns:
    ``corruption -> normalised CE``.
  """
  table = validate_error_table(errors)
  base = resolve_baseline(baseline)
  names = list(corruptions)
  _require(table, names, 'errors')
  _require(base, names, 'baseline')
  out = {}
  for c in names:
    model_mean, base_mean = _paired_means(table[c], base[c], c)
    if base_mean <= 0.0:
      raise ValueError(f'baseline error for {c!r} is 0: cannot normalise by it')
    out[c] = model_mean / base_mean
  return out


def mce(errors: Mapping[str, Mapping[Any, float]], baseline: Baseline = 'alexnet',
        corruptions: Sequence[str] = STANDARD_CORRUPTIONS) -> float:
  """Normalised mean corruption error: ``mean_c CE_c`` over the 15 standard corruptions.

  1.0 means exactly as error-prone as the baseline (AlexNet on ImageNet-C by
  default; for CIFAR pass a baseline run's JSON as the Auxiliary Training paper
  does with its own AlexNet). Pass ``corruptions`` to average over another set
  (e.g. ``STANDARD_CORRUPTIONS_WITHOUT_NOISE``), and say so when reporting.
  """
  return float(np.mean(list(normalized_ce(errors, baseline, corruptions).values())))


def mce_without_noise(errors: Mapping[str, Mapping[Any, float]],
                      baseline: Baseline = 'alexnet') -> float:
  """Normalised mCE over the 12 standard non-noise corruptions."""
  return mce(errors, baseline, STANDARD_CORRUPTIONS_WITHOUT_NOISE)


def relative_mce(errors: Mapping[str, Mapping[Any, float]], clean_error: float,
                 baseline_errors: Baseline = 'alexnet',
                 baseline_clean_error: float | None = None,
                 corruptions: Sequence[str] = STANDARD_CORRUPTIONS) -> float:
  """Normalised relative mCE (Hendrycks & Dietterich 2019).

  ``mean_c [sum_s (E_{c,s} - E_clean)] / [sum_s (E^base_{c,s} - E^base_clean)]``:
  how much *more* error the corruption adds, relative to the baseline's
  degradation. 1.0 = degrades like the baseline.

  Args:
    errors: model error table.
    clean_error: model's clean error (fraction).
    baseline_errors: ``'alexnet'``, a JSON path, or a mapping.
    baseline_clean_error: the baseline's clean error; defaults to
      ``ALEXNET_CLEAN_ERROR`` for ``'alexnet'`` and to the file's
      ``clean_error`` for a JSON path.
    corruptions: which corruptions (default: the 15 standard).
  """
  clean_error = _check_error(clean_error, 'clean_error')
  if baseline_clean_error is None:
    if isinstance(baseline_errors, str) and baseline_errors.lower() == 'alexnet':
      baseline_clean_error = ALEXNET_CLEAN_ERROR
    elif isinstance(baseline_errors, (str, os.PathLike)):
      baseline_clean_error = load_baseline_errors(baseline_errors)['clean_error']
  if baseline_clean_error is None:
    raise ValueError(
        'baseline_clean_error is required for a relative mCE (pass it, or put '
        '"clean_error" in the baseline JSON)')
  baseline_clean_error = _check_error(baseline_clean_error, 'baseline_clean_error')
  table = validate_error_table(errors)
  base = resolve_baseline(baseline_errors)
  names = list(corruptions)
  _require(table, names, 'errors')
  _require(base, names, 'baseline')
  rel = []
  for c in names:
    model_mean, base_mean = _paired_means(table[c], base[c], c)
    denom = base_mean - baseline_clean_error
    if denom <= 0.0:
      raise ValueError(
          f'baseline corrupted error for {c!r} ({base_mean}) does not exceed its clean error '
          f'({baseline_clean_error}): relative CE undefined')
    rel.append((model_mean - clean_error) / denom)
  return float(np.mean(rel))


def corruption_summary(errors: Mapping[str, Mapping[Any, float]],
                       clean_error: float | None = None,
                       baseline: Baseline | None = 'alexnet',
                       baseline_clean_error: float | None = None) -> dict[str, float]:
  """Flat dict of every corruption metric, keys naming their normalisation.

  Keys (fractions unless noted):
    ``unnormalized_ce/<c>`` per corruption in the table;
    ``unnormalized_mce`` and ``unnormalized_mce_wo_noise``, ``mean_accuracy``
    and ``mean_accuracy_wo_noise`` (15 / 12 standard corruptions; only when all
    are present); ``mean_accuracy_extra`` (4 extra corruptions, when present);
    ``mean_accuracy_severity<s>``;
    with a baseline: ``normalized_ce/<c>``, ``mce_normalized`` and
    ``mce_normalized_wo_noise``; with clean errors as well:
    ``relative_mce_normalized``.

  Args:
    errors: the model's error table.
    clean_error: the model's clean error, for the relative mCE.
    baseline: as for :func:`mce`; None skips normalised numbers.
    baseline_clean_error: as for :func:`relative_mce`.
  """
  table = validate_error_table(errors)
  out: dict[str, float] = {}
  for c, v in corruption_errors(table).items():
    out[f'unnormalized_ce/{c}'] = v
  has_std = all(c in table for c in STANDARD_CORRUPTIONS)
  has_wo = all(c in table for c in STANDARD_CORRUPTIONS_WITHOUT_NOISE)
  if has_std:
    out['unnormalized_mce'] = unnormalized_mce(table)
    out['mean_accuracy'] = mean_accuracy(table)
    for s in SEVERITIES:
      if all(s in table[c] for c in STANDARD_CORRUPTIONS):
        out[f'mean_accuracy_severity{s}'] = mean_accuracy_at_severity(table, s)
  if has_wo:
    out['unnormalized_mce_wo_noise'] = unnormalized_mce_without_noise(table)
    out['mean_accuracy_wo_noise'] = mean_accuracy_without_noise(table)
  if all(c in table for c in EXTRA_CORRUPTIONS):
    out['mean_accuracy_extra'] = mean_accuracy(table, EXTRA_CORRUPTIONS)
  if baseline is not None and has_wo:
    base = resolve_baseline(baseline)
    names = [c for c in (STANDARD_CORRUPTIONS if has_std else STANDARD_CORRUPTIONS_WITHOUT_NOISE)]
    for c, v in normalized_ce(table, base, names).items():
      out[f'normalized_ce/{c}'] = v
    if has_std:
      out['mce_normalized'] = mce(table, base)
    out['mce_normalized_wo_noise'] = mce_without_noise(table, base)
    if has_std and clean_error is not None:
      bce = baseline_clean_error
      if bce is None and isinstance(baseline, str) and baseline.lower() == 'alexnet':
        bce = ALEXNET_CLEAN_ERROR
      if bce is None and isinstance(baseline, (str, os.PathLike)) and os.path.exists(baseline):
        bce = load_baseline_errors(baseline)['clean_error']
      if bce is not None:
        out['relative_mce_normalized'] = relative_mce(table, clean_error, base, bce)
  return out


def save_errors_json(path: Union[str, os.PathLike], errors: Mapping[str, Mapping[Any, float]],
                     clean_error: float | None = None) -> str:
  """Writes an error table in the layout :func:`load_baseline_errors` reads.

  Use it to turn a baseline run (e.g. AlexNet or a vanilla ResNet on CIFAR-10)
  into the normaliser for other runs' mCE.
  """
  table = validate_error_table(errors)
  data: dict[str, Any] = {
      'errors': {c: {str(s): e for s, e in per.items()} for c, per in table.items()}}
  if clean_error is not None:
    data['clean_error'] = _check_error(clean_error, 'clean_error')
  path = os.fspath(path)
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with open(path, 'w') as f:
    json.dump(data, f, indent=2, sort_keys=True)
  return path
