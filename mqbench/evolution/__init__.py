"""Automatic proxy discovery (`mqbench discover`).

* `features.py`: per-module scalar statistics (the leaves a discovered proxy is built from);
* `symbolic.py`: expression trees over those leaves with unary/binary primitives (EMQ's
  search space), random generation, mutation, crossover, and rendering to proxy code;
* `fitness.py`: TAP's fitness φ = α·ρ_sens + (1−α)·Acc from cached statistics and the
  ground-truth table, in well under a millisecond per candidate;
* `loop.py`: the evolution loop with checkpoints, resume and the proxy-file writer.
"""
