"""Study analysis jobs: pull a study from the PACS, run the models, store DICOM SR results."""
