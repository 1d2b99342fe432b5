"""What people do to runs (decide, cancel, read), shared by the HTTP API and the CLI."""
