"""One module per input kind. Each turns a reference into an Image; nothing downstream knows the source."""
