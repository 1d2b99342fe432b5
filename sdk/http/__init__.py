"""The HTTP API and the dashboard of the approval inbox."""
