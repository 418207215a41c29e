"""Clients of the runtime's services: a worker's sharded view of the PS (split, encode, call, decode, merge), and
the chief's clients (a worker's link to the chief, and the chief's pull of the final model)."""
