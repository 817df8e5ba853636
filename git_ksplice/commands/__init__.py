"""One module per command: turns options into settings, calls the library once, prints
through `ui`, returns an exit code (`errors.EXIT_*`)."""
