"""What measurements become: the bench waterfall, the per-layer profile, charts, saved runs and their
history and trends."""
