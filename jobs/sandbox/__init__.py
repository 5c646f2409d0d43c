"""The worker's side of a job: the Docker backend (the only code that speaks to the engine), the hardened container
spec, the warm pool, the job's work folder, and the recovery of jobs whose worker was lost.

Only the worker imports this package: the web process sends jobs to the broker by task name and never loads
`docker` or anything here (tests/jobs/test_web_imports.py).
"""
