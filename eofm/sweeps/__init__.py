"""Sweeps: points defined by a config's `get_sweep()` (spec), run on this machine or as SLURM job
arrays through submitit (launchers), and summarised in one table and plot (summary)."""
