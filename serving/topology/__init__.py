"""The Serve applications Medserve runs (one per model version, one gateway) and their
changes at run time: models loaded and unloaded without touching the others."""
