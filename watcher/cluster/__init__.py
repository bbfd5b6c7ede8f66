"""Cluster mode: several replicas on one shared inbox, outbox and failed dir, and one PostgreSQL.

:mod:`watcher.cluster.claims` divides the files (a rename into the replica's own claims folder);
:mod:`watcher.cluster.membership` proves replicas alive and elects the leader with PostgreSQL
advisory locks. Nothing here is imported unless WATCHER_CLUSTER=true (psycopg is an extra).
"""
