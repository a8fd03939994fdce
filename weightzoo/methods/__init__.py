"""Training methods, one module each, registered by name: the contract in ``base``, the
registry in ``registry``. Importing this package registers the built-in methods: ``ce``,
``focal``, ``gce``, ``sce``, ``class-balanced`` (``plain``), ``frozen`` (a pretrained
weighter), ``mwnet`` / ``cmwnet`` (``meta_weighting``), ``cmwnet-sl``, ``l2rw``, ``arl``,
``proden`` (partial labels) and ``fixmatch`` (semi-supervised). A method defined elsewhere
registers itself the same way (see the README, "Adding a method")."""

from weightzoo.methods import (  # noqa: F401 - registers the built-ins
    fixmatch,
    frozen,
    l2rw,
    meta_weighting,
    plain,
    proden,
    robust_loss,
    soft_labels,
)
