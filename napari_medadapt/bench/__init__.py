"""Benchmarks behind ``medadapt bench``; each writes JSON and Markdown into docs/benchmarks."""
