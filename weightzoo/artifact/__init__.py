"""Artifacts: the on-disk format (``format``), the Hub convention on the objects (``mixin``),
the model card (``card``) and curve (``curve``), name resolution and upload (``hub``) and
the local versioned zoo (``zoo``).  Import the submodules; this package imports nothing so
that the artifact classes can use the mixin without an import cycle."""
