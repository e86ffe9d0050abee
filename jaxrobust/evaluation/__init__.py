"""Evaluation: clean metrics, corruption errors/mCE, attacks, epsilon*, Fourier maps, reports.

The runner (``jaxrobust.evaluation.runner``, CLI ``python -m jaxrobust.evaluate``) restores a run
and executes the suites; the other modules are model-agnostic pieces taking pure ``x -> logits``
functions.
"""
