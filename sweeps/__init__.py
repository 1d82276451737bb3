"""Sweeps on Ray Tune: specs (base config x grid x resources), a prepare stage, trials, leaderboards."""
