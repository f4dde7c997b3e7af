"""Faithfulness benchmarks for token attributions.

* :mod:`benchmarks.metrics`: AOPC, LOdds, Kendall-tau confidence, Precision@K;
* :mod:`benchmarks.protocols`: the papers' definitions and the reference-code presets;
* :mod:`benchmarks.data`: SST-2 / MNLI / IMDB and local files through ``datasets``;
* :mod:`benchmarks.baselines`: Captum IG / Saliency / InputXGradient and a random floor;
* :mod:`benchmarks.finetune`: the default model (all-MiniLM-L6-v2 fine-tuned on SST-2);
* :mod:`benchmarks.run`: ``python -m benchmarks.run`` writes the results table and plots;
* :mod:`benchmarks.distributed`: the ranks of a ``torchrun`` launch of the runner;
* :mod:`benchmarks.resume`: fingerprints and per-shard partial results (resumable runs);
* :mod:`benchmarks.speed`: the speed harness against the gradient floor.
"""
