"""The ``eve`` command line: a thin layer over flows and tasks."""
