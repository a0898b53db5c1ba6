"""The `llada-jax` command: one module per subcommand."""
