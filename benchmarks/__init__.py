"""On-demand benchmarks; results go to benchmarks/results/."""
