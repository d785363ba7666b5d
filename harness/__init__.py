"""flowarena's harness: `run/` trains one run, `sweep/` plans and follows many runs,
`cli.py` puts both behind the `flowarena` command (docs/architecture.md)."""
