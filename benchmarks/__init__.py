"""skipbench's benchmarks: the asv suite (benchmarks.py, see asv.conf.json) and whole-command
wall-clock scripts (wallclock.py)."""
