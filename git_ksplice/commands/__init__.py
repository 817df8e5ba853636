"""One module per command: parses nothing, prints through `ui`, returns an exit code."""
