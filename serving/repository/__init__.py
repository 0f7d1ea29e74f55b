"""The model repository on disk: manifests, checksums, weights and networks, demo builds,
canary edits."""
