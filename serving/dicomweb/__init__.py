"""DICOMweb with the hospital's PACS: QIDO-RS search, WADO-RS retrieve, STOW-RS store."""
