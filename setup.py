"""Shim for tools that still call setup.py; the configuration is in setup.cfg."""

from setuptools import setup

setup()
