"""Build hook for the optional C accelerators; all metadata is in pyproject.toml.

``edgistry.firmware.caplets._capscan`` speeds up the token frame scan and
``edgistry.firmware.link._linkwire`` the link codec on CPython. Both are
optional: without a C compiler the install still succeeds and ``cap_codec`` /
``link_wire`` use their pure-Python code (the reference, and the only path on
MicroPython).
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("edgistry.firmware.caplets._capscan", ["firmware/caplets/_capscan.c"],
              optional=True),
    Extension("edgistry.firmware.link._linkwire", ["firmware/link/_linkwire.c"], optional=True),
])
