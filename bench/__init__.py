"""Benchmark harness for Helios (``make bench``); see ``bench/run.py``."""
