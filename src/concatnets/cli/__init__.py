"""The ``concatnets`` command line: ``main(argv)`` in :mod:`concatnets.cli.main`."""
