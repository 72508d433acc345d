"""HiRA for leitai; the method and its hook are in :mod:`leitai_hira.method`."""
