"""Client code for the platform's HTTP API that needs nothing but the standard library (for the `ainode` CLI)."""
