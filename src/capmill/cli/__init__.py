"""The command line: one module per subcommand, typed errors translated at this edge."""
