"""`ainode`: the command-line client of the Infra AI Node API (standard library only)."""
