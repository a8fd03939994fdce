"""Weighting: weighter networks (``nets``), task families (``families``), the weighted-loss
normalisation (``reduction``), the one weighting path (``sample_weighting``) and the user-facing
loss wrapper (``weighted_loss``)."""
