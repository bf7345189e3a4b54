"""Where the provider layer (I/O) meets the scheduler's pure decisions: conversions and the actuator's helpers."""
