"""The numbers: LR transfer (optima, drift, regret, verdicts), training dynamics (regimes, lr·wd,
conditioning), the coordinate check and comparisons across results directories. Pure
pandas/numpy on the results tables; nothing here draws or formats."""
