"""The package version and the program's name: the one place each is written."""

__version__ = "0.1.0"
#: The program's name, as users type it and as messages name it.
PROG = "container-desktop-relay"
