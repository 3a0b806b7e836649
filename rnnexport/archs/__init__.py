"""The built-in architectures: torch-free declarations in :mod:`rnnexport.archs.catalog`, and one
module of PyTorch classes per family (:mod:`~rnnexport.archs.parallel`, :mod:`~rnnexport.archs.sequence`),
imported only when a model is built. Importing this package registers every architecture.

To add an architecture: its module in a family file, its ``register(ArchSpec(...))`` in the catalog,
then ``python scripts/make_golden.py --arch NAME``.
"""

from rnnexport.archs import catalog

__all__ = ["catalog"]
