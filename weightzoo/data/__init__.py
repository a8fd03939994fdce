"""Data: offline dataset sources (``sources``) and seeded bias injection (``bias``)."""
