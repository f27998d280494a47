"""Speed, memory and FLOP benchmarks of the engine (the ``bench`` command and scripts)."""
