"""bench/tests need neither Django nor a database: see bench/README.md for the pytest flags."""
