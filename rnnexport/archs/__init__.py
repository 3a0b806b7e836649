"""One module per architecture family; importing this package registers all of them.

To add an architecture: define its module and ``register(ArchSpec(...))`` in the family's file (or
a new file imported below), then run ``python scripts/make_golden.py --arch NAME``.
"""

from rnnexport.archs import parallel, sequence

__all__ = ["parallel", "sequence"]
