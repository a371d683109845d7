"""The database: received instances, studies, jobs and deliveries."""
