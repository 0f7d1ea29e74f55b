"""Wire protocols spoken by Medserve: pure codecs between request bytes and numpy arrays."""
