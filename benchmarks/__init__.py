"""skipbench's benchmarks: the asv suite (to come) and whole-command wall-clock scripts."""
