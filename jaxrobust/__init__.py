"""jaxrobust: accurate and robust image classifiers in JAX/Flax."""

__version__ = '0.1.0'
