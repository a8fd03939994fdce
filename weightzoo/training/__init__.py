"""Training: the engine (``engine``), data views (``views``) and checkpoints (``checkpoint``)."""
