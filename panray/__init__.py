"""panray: workload management for huge scientific DAG workflows on Ray."""
