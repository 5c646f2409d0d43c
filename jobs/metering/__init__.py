"""Metering: where a bill is made.

Each job gets its own gateway (`gateway`) on a Unix socket, the container's only way out. It speaks the Ollama and
OpenAI APIs (`wire` translates both to one form and back), asks the job's meter (`meter`) for room in the budget
before it forwards a call to the AI node, and writes what the node reported to the ledger (`ledger`), which prices
the call and adds it to the job's totals and the daily roll-ups.
"""
