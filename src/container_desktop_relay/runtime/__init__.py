"""Process lifecycle: the event loop and signals, role composition, spawning, parent watching."""
