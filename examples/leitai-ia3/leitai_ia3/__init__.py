"""(IA)³ for leitai; the method and its hook are in :mod:`leitai_ia3.method`."""
