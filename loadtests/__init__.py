"""Load tests and capacity planning for Medserve (the `medserve[loadtest]` extra).

One folder per job, imports pointing one way only (traffic <- generator <- report <- run <-
capacity; cli.py over all of them):

- `traffic/`: what load to send: rollouts (sites, visits, a diurnal day), shapes over a run,
  load-test profiles and the plan the Locust process runs;
- `generator/`: how it is sent: payloads, open-loop arrivals, Locust users and locustfile;
- `report/`: the SLO verdict on a run's records and its text/CSV/PNG report, percentiles;
- `run/`: driving runs: the SLO gate, a local or stub server, the overload run;
- `capacity/`: per-replica profiling, queueing maths, the planner and its report;
- `cli.py`: `medserve loadtest`, `medserve capacity` and `medserve-loadtest`.

Only `loadtests.generator.users` and `loadtests.generator.locustfile` import Locust (and so
gevent); they run in the Locust subprocess that `medserve loadtest` starts. Every other module
is safe to import in the tests, the CLI and the Serve processes.
"""
