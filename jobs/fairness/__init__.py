"""Fair share of a node's workers and call slots between users: the Virtual Token Counter (Sheng et al., OSDI '24),
at two levels.

- Which job runs next (`dispatch`). Jobs wait in the outbox (jobs/outbox.py); a queue's jobs are sent only as its
  workers have seats (`seats`), each to the user with the least recent service for their weight, the user's own
  jobs oldest first (a synchronous run before their asynchronous ones). The decision is the relay's, made under a
  lock of the queue in PostgreSQL, so it holds with SQS (whose order is not ours) and any number of worker hosts.
- Which model call goes next when a node is at its `max_concurrent_calls` (`call_slots`): calls wait for a slot,
  shared by every worker of the node, granted in the same order.

Service (`counters`) is counted in units: a prompt token 1, a generated token 2 (generation costs the node more),
and RUNNING_SECOND_UNITS per second a job holds a worker (a job that calls no model still uses the seat). It
decays with half-life FAIR_SHARE_HALF_LIFE_SECONDS, so it measures the last minutes: a user who arrives while
another floods the node is served first until their recent service catches up. No one waits for ever: a user whose
next job (or call) has been passed over for FAIR_SHARE_MAX_WAIT_SECONDS goes first whatever their service.
"""
