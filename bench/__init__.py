"""Benchmarks of ``watcher run`` against two baselines (``make bench``, ``make bench-smoke``).

The harness starts each subject as a subprocess on the same folders, drives a workload, observes
deliveries with inotify on the outbox, checks integrity and writes ``bench/results/latest.{md,json,png}``.
See ``bench/README.md``.
"""
