"""Benchmarks: ysyncd against the Node reference server, under the same load.

Run ``python -m benchmarks --help``; see ``benchmarks/README.md``.
"""
