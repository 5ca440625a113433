"""slidestream: the command line and the pipeline that wires slides -> tiling -> transfer -> inference -> viewer.

Its version is the installed package's (pyproject.toml): `slidestream --version`.
"""
