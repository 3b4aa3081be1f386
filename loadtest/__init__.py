"""Load generation and benchmarks for the service: ``python -m loadtest`` (any running instance) and
``python -m loadtest.bench`` (starts the service and measures it against its ceilings). See docs/loadtest.md.
"""
