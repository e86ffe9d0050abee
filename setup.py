"""Installs jaxrobust: `pip install -e .`."""

import pathlib

from setuptools import find_packages, setup

here = pathlib.Path(__file__).parent
requirements = [line.strip() for line in (here / 'requirements.txt').read_text().splitlines()
                if line.strip() and not line.startswith('#')]

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
