"""The Storage SCP: receives instances and persists them before answering."""
