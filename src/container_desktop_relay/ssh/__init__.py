"""SSH: both roles' SSH side, keys, host keys, authorized_keys and the asyncssh layer."""
