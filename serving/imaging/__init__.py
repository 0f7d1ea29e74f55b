"""Medical image decoding, preprocessing and post-processing."""
