"""Phase 2: the task graph checked and planned (order, levels, critical path)."""
