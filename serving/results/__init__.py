"""Imaging results in the hospital's formats: DICOM Structured Report and FHIR R4."""
