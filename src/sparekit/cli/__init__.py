"""The ``sparekit`` command line (see :mod:`sparekit.cli.main`)."""
