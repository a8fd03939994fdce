"""Bilevel optimisation: the virtual step (``lookahead``), pluggable meta-gradient estimators
(``estimators``) and meta sets (``metaset``)."""
