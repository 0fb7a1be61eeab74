"""The HTTP gateway: submit experiments, register datasets, watch the shared queue."""
