"""The load generator: what each request carries (workloads), when it leaves (openloop), and
the Locust users and locustfile that send it (users, locustfile).

Only `users` and `locustfile` import Locust and gevent; they run in the Locust subprocess
only. `workloads` and `openloop` are pure, so the gate, the profiler and the tests use them.
"""
