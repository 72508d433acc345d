"""leitai's built-in plugins. Each module registers through the ``leitai`` entry-point group."""
