"""Load tests and capacity planning for Medserve.

Pure modules (traffic model, shapes, open-loop arrivals, SLO maths, queueing, planner) import
no gevent, so the tests, the CLI and the Serve processes can use them safely; only
`loadtests.users` and `loadtests.locustfile` import Locust, and they run in the Locust
subprocess that `medserve loadtest` starts.
"""
