"""Installs jaxrobust: `pip install -e .`."""

import pathlib

from setuptools import find_packages, setup

here = pathlib.Path(__file__).parent
# requirements.txt pins the tested CPU versions; installed as a package, jaxrobust asks only for
# those versions or newer, so `pip install -e .` keeps a runtime's own JAX build (CUDA, TPU,
# Colab's) instead of replacing it with the CPU pin. TensorFlow (for tf.data) is left to
# requirements.txt's tensorflow-cpu or the runtime's own tensorflow: either provides the module,
# and installing one over the other breaks both.
requirements = []
for line in (here / 'requirements.txt').read_text().splitlines():
  line = line.split('#')[0].strip()
  if line and not line.startswith('tensorflow-cpu'):
    requirements.append(line.replace('==', '>='))

setup(
    name='jaxrobust',
    version='0.1.0',
    description='Training accurate and robust image classifiers in JAX/Flax: AdvProp, MixProp, '
                'GNT/ANT, Auxiliary Training, EWS, with one loop and one evaluation harness.',
    long_description=(here / 'README.md').read_text() if (here / 'README.md').exists() else '',
    long_description_content_type='text/markdown',
    packages=find_packages(include=['jaxrobust', 'jaxrobust.*']),
    python_requires='>=3.10',
    install_requires=requirements,
)
