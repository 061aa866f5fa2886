"""`wattscale simulate`: wattscale's closed loop against the policies operators run today, on scenarios (a host,
a workload over time, events), in simulated time against the token-level emulator (simulator/)."""
