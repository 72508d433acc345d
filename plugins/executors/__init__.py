"""The built-in executors: ``local`` (this machine) and ``ray`` (a Ray cluster)."""
