"""The top layer, what starts a job: the `neon` command (`cli`, also `python -m neon`) and its pre-flight checks
(`preflight`, which also finds the config folder), the processes a job runs (`layout`: how many and who starts
them; `distributed`: spawning them or joining an outside launcher's), torch's CPU threads per process
(`threads`), each process's loggers (`loggers`), and `neon` from a notebook (`notebook`)."""
