"""xelm: cross-lingual expert language models as a toolkit.

The public API for plugin authors and scripts lives in :mod:`xelm_cli.api`.
"""

__version__ = "0.1.0"
