"""Local endpoints the client role listens on (Unix sockets, Windows named pipes)."""
