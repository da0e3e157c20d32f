"""The suite of worlds: world definitions, a second generator (ledger) and the runner."""
