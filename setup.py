"""Build hook for the optional C accelerator; all metadata is in pyproject.toml.

``edgistry.firmware.caplets._capscan`` speeds up the token frame scan on
CPython. It is optional: without a C compiler the install still succeeds and
``cap_codec`` uses its pure-Python scanner (the reference, and the only one on
MicroPython).
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("edgistry.firmware.caplets._capscan", ["firmware/caplets/_capscan.c"],
              optional=True),
])
