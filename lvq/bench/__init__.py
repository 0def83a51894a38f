"""Benchmarks (``make bench`` / ``python -m lvq.bench``): tables of measured figures.

Section modules return DataFrames; ``__main__`` runs the model-level entries in subprocesses
(one fresh process per method, so peak RAM is per method), writes ``assets/bench/*.csv``,
``assets/bench_results.csv`` (the dashboard's Compare page) and ``BENCHMARKS.md``.
"""
