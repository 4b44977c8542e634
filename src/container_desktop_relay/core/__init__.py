"""The forwarding core: the pump, the ends it drives, idle limits and retry delays."""
