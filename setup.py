"""Build glue: the native kernels are compiled by native/build.py during install (see native/README.md)."""
from setuptools import setup

setup()
