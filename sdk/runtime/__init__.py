"""What runs inside a worker: the durable context, attempts and the worker loop."""
