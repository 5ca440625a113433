"""slidestream: the command line and the pipeline that wires slides -> tiling -> transfer -> inference -> viewer."""

__version__ = "0.1.0"
