"""The way of a file: observer → intake (filter, readiness) → queue → workers → transfer."""
