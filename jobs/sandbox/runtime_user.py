"""The user a job container's processes run as. The job's folders are shared with its group, its gateway socket
too, and only its uid may report the job's result: one constant for all three."""
RUNTIME_UID = 10001
RUNTIME_GID = 10001
RUNTIME_USER = f"{RUNTIME_UID}:{RUNTIME_GID}"
