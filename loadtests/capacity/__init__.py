"""Capacity planning: per-replica profiles (profiler), queueing maths (queueing), the planner
that sizes replicas, GPUs and cost (planner), and its table, plot and overlay (report)."""
