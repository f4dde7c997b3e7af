"""Benchmarks: faithfulness metrics, task data, runners and the speed harness."""
