"""Benchmarks for slimkit: the SmolLM2-135M fixture, the quality table and the inference-speed comparison."""
