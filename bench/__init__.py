"""The benchmark behind the project's claims: `make bench`, results in docs/bench/.

- `grid`: per seed, one RL teacher, then every distillation method from the same base and teacher, with
  curves recorded by `probe.Probe` (target and core accuracy, drift/kl_core, tokens, steps, wall time);
- `step_efficiency`: time per step of the routed trainer against TRL's stock `DistillationTrainer` and
  against the sum of its irreducible passes, measured side by side in one process;
- `continual`: three consecutive updates through the real flow, with the accuracy matrix, ACC and BWT;
- `report`: the tables, plots and write-up inputs.
"""
